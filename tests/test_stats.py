"""stats: counts per state, oldest age, last success/failure, Prometheus textfile."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from mssendmail.admin import stats
from mssendmail.admin.cli import main
from mssendmail.spool import pause
from mssendmail.spool.layout import Spool
from tests import queuedemo


def test_counts_ages_and_last_events(spool: Spool) -> None:
    ids = queuedemo.demo(spool)
    [held] = queuedemo.queued(spool, 1)
    from mssendmail.admin import actions as admin

    admin.hold(spool, held)
    now = time.time()
    snap = stats.collect(spool, now=now + 100)
    assert snap.counts == {
        "queued": 1,
        "active": 0,
        "deferred": 1,
        "hold": 1,
        "dead": 1,
        "sent": 2,
        "corrupt": 0,
    }
    # The deferred message is older than the queued one; ids carry whole seconds.
    assert snap.oldest_queued_age is not None and 99 <= snap.oldest_queued_age <= 103
    assert snap.last_success_id in ids["sent"]
    assert snap.last_failure_id == ids["dead"][0]
    assert snap.last_failure_reason is not None
    assert "ErrorInvalidRecipients" in snap.last_failure_reason
    assert snap.paused_until is None


def test_newest_failure_wins(spool: Spool) -> None:
    [a, b] = queuedemo.queued(spool, 2)
    queuedemo.bury(spool, a, code="Old", now=time.time() - 500)
    queuedemo.defer(spool, b, time.time() + 60, code="Newer", now=time.time() - 10)
    snap = stats.collect(spool)
    assert snap.last_failure_id == b
    assert snap.last_failure_reason and "Newer" in snap.last_failure_reason


def test_empty_spool(spool: Spool) -> None:
    snap = stats.collect(spool)
    assert set(snap.counts.values()) == {0}
    assert snap.oldest_queued_age is None and snap.last_success is None
    text = "\n".join(stats.render(snap))
    assert "queue is empty" in text and "none recorded" in text


def test_render_fits_80_columns_and_shows_a_pause(spool: Spool) -> None:
    queuedemo.demo(spool)
    pause.pause_queue(spool, time.time(), "invalid_client: " + "x" * 300, 60, 60)
    lines = stats.render(stats.collect(spool))
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("PAUSED") for line in lines)


def test_prometheus_file_is_written_atomically(
    spool: Spool, config_file: Path, clean_env: None, tmp_path: Path
) -> None:
    queuedemo.demo(spool)
    target = tmp_path / "textfile" / "mssendmail.prom"
    target.parent.mkdir()
    target.write_text("old content\n")
    before = os.stat(target).st_ino
    assert main(["stats", "--prometheus", str(target), "--config", str(config_file)]) == 0
    text = target.read_text()
    assert os.stat(target).st_ino != before  # replaced by rename, not rewritten in place
    assert os.listdir(target.parent) == ["mssendmail.prom"]  # no temp file left
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert 'mssendmail_messages{state="dead"} 1' in text
    assert 'mssendmail_messages{state="sent"} 2' in text
    assert "# TYPE mssendmail_last_success_timestamp_seconds gauge" in text
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)  # every sample is a number
            assert name.startswith("mssendmail_")


def test_json_output(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    queuedemo.demo(spool)
    assert main(["stats", "--json", "--config", str(config_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["sent"] == 2
    assert set(doc) == {
        "counts",
        "oldest_queued_age",
        "last_success",
        "last_success_id",
        "last_failure",
        "last_failure_id",
        "last_failure_reason",
        "paused_until",
        "pause_reason",
        "heartbeat",
        "budgets",
        "waiting",
        "mime_fixed",
    }


def test_unwritable_prometheus_target_is_one_line(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["stats", "--prometheus", "/nonexistent/dir/x.prom", "--config", str(config_file)])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "/nonexistent/dir/x.prom" in err


def test_mime_repairs_from_the_heartbeat_are_shown_and_exported(spool: Spool) -> None:
    path = Path(spool.path("state", stats.HEARTBEAT_FILE))
    path.write_text(
        json.dumps({"time": time.time(), "mime_fixed": {"qp": 3, "charset": 5, 'x"}': 1}})
    )
    snap = stats.collect(spool)
    assert snap.mime_fixed == {"qp": 3, "charset": 5}  # odd keys are not trusted
    assert "MIME repaired: charset 5, qp 3 (since the worker started)" in stats.render(snap)
    prom = stats.prometheus(snap)
    assert 'mssendmail_mime_fixed_total{fix="qp"} 3' in prom
    assert "# TYPE mssendmail_mime_fixed_total counter" in prom
