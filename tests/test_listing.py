"""Listing rows (list, mailq data) and their rendering: states, order, 80 columns, safety."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from mssendmail.admin import listing
from mssendmail.admin.cli import main
from mssendmail.spool import record
from mssendmail.spool.layout import DEFERRED, QUEUE, Spool
from tests import queuedemo

JSON_FIELDS = {
    "id",
    "state",
    "submitted",
    "next_attempt",
    "attempts",
    "size",
    "sender",
    "recipients",
    "error_code",
    "error",
    "sent",
    "damaged",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_empty_queue_says_so(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "list", "--config", str(config_file))
    assert code == 0
    assert out == "queue is empty\n"


def test_rows_have_state_attempts_error_and_sort_by_time(spool: Spool) -> None:
    now = time.time()
    ids = queuedemo.demo(spool)
    rows = listing.collect(spool, listing.STATES)
    expected = ids["sent"] + ids["deferred"] + ids["dead"] + ids["queued"]
    assert [r.id for r in rows] == expected  # submission order
    by_id = {r.id: r for r in rows}
    deferred = by_id[ids["deferred"][0]]
    assert deferred.state == "deferred"
    assert deferred.attempts == 3
    assert deferred.error_code == "ServiceUnavailable"
    assert deferred.next_attempt is not None and abs(deferred.next_attempt - (now + 540)) < 5
    assert deferred.recipients == ["ops@example.com", "dba@example.com"]
    dead = by_id[ids["dead"][0]]
    assert (dead.state, dead.error_code, dead.sender) == (
        "dead",
        "ErrorInvalidRecipients",
        "cron@example.com",
    )
    queued = by_id[ids["queued"][0]]
    assert queued.state == "queued" and queued.attempts == 0 and queued.size
    assert {by_id[i].state for i in ids["sent"]} == {"sent"}
    # The default listing leaves sent mail out.
    assert {r.state for r in listing.collect(spool)} == {"deferred", "dead", "queued"}


def test_maildrop_entries_count_as_queued(spool: Spool) -> None:
    [qid] = queuedemo.submit(spool)  # not picked up yet
    [row] = listing.collect(spool)
    assert (row.id, row.state, row.area) == (qid, "queued", "maildrop")


def test_json_lines_have_the_documented_fields(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    queuedemo.demo(spool)
    code, out, _ = run(capsys, "list", "--state", "all", "--json", "--config", str(config_file))
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 5
    assert all(set(d) == JSON_FIELDS for d in docs)
    assert [d["state"] for d in docs].count("sent") == 2


def test_render_fits_80_columns_with_long_values(spool: Spool) -> None:
    long_sender = "a-very-long-sender-address-" + "x" * 80 + "@example.com"
    rcpts = [f"recipient-number-{i}-with-a-long-name@example.com" for i in range(40)]
    ids = queuedemo.queued(spool, 1, sender=long_sender, rcpts=rcpts)
    queuedemo.defer(
        spool, ids[0], time.time() + 7300, code="ErrorSomethingExtremelyLongAndUnexpected" * 3
    )
    queuedemo.demo(spool)
    lines = listing.render(listing.collect(spool, listing.STATES))
    assert max(len(line) for line in lines) <= 80
    assert any("+" in line and "more" in line for line in lines)
    assert any(line.startswith(ids[0]) and "in 2h" in line for line in lines)


def test_hostile_envelope_cannot_drive_the_terminal(spool: Spool) -> None:
    evil = "x\x1b]0;pwned\x07\x1b[2J@example.com"
    queuedemo.queued(spool, 1, sender=evil, rcpts=[evil])
    text = "\n".join(listing.render(listing.collect(spool)))
    assert "\x1b" not in text and "\x07" not in text
    assert "x?]0;pwned??[2J@example.com" in text


def test_listing_reads_only_the_envelope_not_the_whole_message(spool: Spool) -> None:
    """An edited body is not noticed by list (no hashing), only by show/verify."""
    [qid] = queuedemo.queued(spool, 1, body=b"A" * 200_000 + b"\n")
    path = spool.path(QUEUE, qid)
    with open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"B")
    [row] = listing.collect(spool)
    assert (
        row.damaged is None
        and row.size
        == os.path.getsize(path)
        - len(record.encode_envelope(listing.read_envelope(path)[0]))
        - record.FOOTER_LEN
    )
    with open(path, "rb") as fh, pytest.raises(record.CorruptRecord):
        record.verify(fh)


def test_torn_file_is_listed_as_damaged(spool: Spool) -> None:
    [qid] = queuedemo.queued(spool, 1)
    path = spool.path(QUEUE, qid)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 5)
    [row] = listing.collect(spool)
    assert row.damaged and "footer" in row.damaged
    assert "damaged" in "\n".join(listing.render([row]))


def test_color_only_on_a_tty_without_no_color(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert listing.use_color(Tty())
    assert not listing.use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not listing.use_color(Tty())
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.defer(spool, qid, time.time() + 60)
    rows = listing.collect(spool)
    colored = listing.render(rows, color=True)
    plain = listing.render(rows, color=False)
    assert "\033[33mdeferred" in colored[1]
    assert "\033" not in "".join(plain)


def test_list_command_never_colors_a_pipe(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.defer(spool, qid, time.time() + 60)
    _, out, _ = run(capsys, "list", "--config", str(config_file))
    assert "\033" not in out and "deferred" in out


def test_state_filter(spool: Spool) -> None:
    ids = queuedemo.demo(spool)
    assert [r.id for r in listing.collect(spool, ("dead",))] == ids["dead"]
    assert listing.parse_states("all") == listing.STATES
    assert listing.parse_states("deferred,queued") == ("queued", "deferred")
    with pytest.raises(ValueError, match="bogus"):
        listing.parse_states("bogus")


def test_unknown_state_is_a_usage_error(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "list", "--state", "nope", "--config", str(config_file))
    assert code == 64
    assert err.count("\n") == 1 and "nope" in err


def test_deferred_next_attempt_is_the_file_mtime(spool: Spool) -> None:
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.defer(spool, qid, time.time() + 100)
    os.utime(spool.path(DEFERRED, qid), (1_000, 5_000_000_000))
    [row] = listing.collect(spool)
    assert row.next_attempt == 5_000_000_000
