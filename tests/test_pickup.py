"""Pickup treats maildrop/ as hostile and moves only verified records."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mssendmail.delivery.pickup import pickup
from mssendmail.spool import record
from mssendmail.spool.layout import CORRUPT, EMPTY_TEMP_GRACE, MAILDROP, QUEUE, Spool, new_id
from mssendmail.submission.writer import Submission, make_envelope

MAX = 10 * 1024 * 1024


def submit(
    spool: Spool, body: bytes = b"Subject: t\n\nhello\n", rcpt: str = "a@example.com"
) -> str:
    with Submission(spool, MAX) as sub:
        sub.write(body)
        return sub.commit(make_envelope("s@example.com", [rcpt]))


def corrupt_reasons(spool: Spool) -> list[str]:
    out = []
    for name in os.listdir(spool.dir(CORRUPT)):
        if name.endswith(".reason.json"):
            out.append(json.loads(Path(spool.dir(CORRUPT), name).read_text())["reason"])
    return out


def test_valid_submission_is_copied_verified_and_removed(spool: Spool) -> None:
    qid = submit(spool)
    assert pickup(spool, MAX) == [qid]
    assert os.listdir(spool.dir(MAILDROP)) == []
    with open(spool.path(QUEUE, qid), "rb") as fh:
        envelope, n = record.verify(fh)
        assert record.read_message(fh, n) == b"Subject: t\n\nhello\n"
    assert envelope["uid"] == os.getuid()
    assert envelope["recipients"] == ["a@example.com"]


def test_claimed_uid_is_replaced_by_file_owner(spool: Spool) -> None:
    with Submission(spool, MAX) as sub:
        sub.write(b"x\n")
        env = make_envelope("", ["a@example.com"])
        env["uid"] = 12345
        env["user"] = "someone-else"
        qid = sub.commit(env)
    pickup(spool, MAX)
    with open(spool.path(QUEUE, qid), "rb") as fh:
        envelope, _ = record.verify(fh)
    assert envelope["uid"] == os.getuid()
    assert envelope["claimed_uid"] == 12345
    assert envelope["user"] != "someone-else"


def test_edited_record_is_quarantined(spool: Spool) -> None:
    qid = submit(spool, b"Subject: t\n\nAAAA\n")
    path = spool.path(MAILDROP, qid)
    data = Path(path).read_bytes().replace(b"AAAA", b"BBBB")
    Path(path).write_bytes(data)
    assert pickup(spool, MAX) == []
    assert os.listdir(spool.dir(QUEUE)) == []
    assert any("checksum" in r for r in corrupt_reasons(spool))


def test_torn_record_is_quarantined(spool: Spool) -> None:
    qid = submit(spool)
    path = spool.path(MAILDROP, qid)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-10])
    assert pickup(spool, MAX) == []
    assert len(corrupt_reasons(spool)) == 1


def test_symlink_is_not_followed(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("CLIENT_SECRET=hunter2\n")
    os.symlink(secret, spool.path(MAILDROP, new_id()))
    assert pickup(spool, MAX) == []
    assert secret.read_text() == "CLIENT_SECRET=hunter2\n"
    assert os.listdir(spool.dir(QUEUE)) == []
    [name] = [n for n in os.listdir(spool.dir(CORRUPT)) if not n.endswith(".json")]
    assert os.path.islink(spool.path(CORRUPT, name))
    assert not any(b"hunter2" in p.read_bytes() for p in Path(spool.root).rglob("*.json"))


def test_hard_link_fifo_huge_and_bad_names_are_quarantined(spool: Spool, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"private")
    os.link(outside, spool.path(MAILDROP, new_id()))
    os.mkfifo(spool.path(MAILDROP, new_id()))
    huge = spool.path(MAILDROP, new_id())
    with open(huge, "wb") as fh:
        fh.truncate(MAX + 2 * 1024 * 1024)
    Path(spool.path(MAILDROP, "garbage name")).write_bytes(b"junk")
    assert pickup(spool, MAX) == []
    reasons = corrupt_reasons(spool)
    assert any("hard link" in r for r in reasons)
    assert any("regular file" in r for r in reasons)
    assert any("too big" in r for r in reasons)
    assert any("not a queue id" in r for r in reasons)
    assert outside.read_bytes() == b"private"
    assert os.listdir(spool.dir(MAILDROP)) == []


def test_locked_temp_file_is_left_alone_and_dead_one_removed(spool: Spool) -> None:
    live = Submission(spool, MAX)
    live.write(b"partial")
    dead = spool.path(MAILDROP, "tmp." + new_id())
    Path(dead).write_bytes(b"half a message")
    pickup(spool, MAX)
    names = os.listdir(spool.dir(MAILDROP))
    assert os.path.basename(live.temp) in names
    assert os.path.basename(dead) not in names
    live.abort()


def test_fresh_empty_temp_is_kept_for_a_grace_period(spool: Spool) -> None:
    empty = spool.path(MAILDROP, "tmp." + new_id())
    Path(empty).write_bytes(b"")
    pickup(spool, MAX)
    assert os.path.exists(empty)
    old = os.stat(empty).st_mtime - EMPTY_TEMP_GRACE - 1
    os.utime(empty, (old, old))
    pickup(spool, MAX)
    assert not os.path.exists(empty)


def test_already_queued_duplicate_is_dropped_not_requeued(spool: Spool) -> None:
    qid = submit(spool)
    data = Path(spool.path(MAILDROP, qid)).read_bytes()
    pickup(spool, MAX)
    # a crash between link into queue/ and unlink from maildrop/ leaves both
    Path(spool.path(MAILDROP, qid)).write_bytes(data)
    os.chmod(spool.path(MAILDROP, qid), 0o640)
    assert pickup(spool, MAX) == []
    assert os.listdir(spool.dir(MAILDROP)) == []
    assert spool.ids(QUEUE) == [qid]


def test_limit_bounds_one_round(spool: Spool) -> None:
    ids = [submit(spool) for _ in range(5)]
    first = pickup(spool, MAX, limit=2)
    assert first == sorted(ids)[:2]
    assert sorted(first + pickup(spool, MAX)) == sorted(ids)


# ---- quarantine keeps a copy the submitter cannot change (issue 12) ------------


def test_a_quarantined_file_is_a_copy_the_submitters_open_fd_cannot_reach(spool: Spool) -> None:
    planted = spool.path(MAILDROP, new_id())
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, b"junk" * 100)
    try:
        assert pickup(spool, MAX) == []
        os.write(fd, b"MORE" * 1000)  # the submitter goes on writing into what it still holds
    finally:
        os.close(fd)
    assert os.listdir(spool.dir(MAILDROP)) == []
    [entry] = [n for n in os.listdir(spool.dir(CORRUPT)) if not n.endswith(".reason.json")]
    assert Path(spool.dir(CORRUPT), entry).read_bytes() == b"junk" * 100
    info = json.loads(Path(spool.dir(CORRUPT), entry + ".reason.json").read_text())
    assert (info["kept"], info["size"], info["bytes"]) == ("copy", 400, 400)


def test_a_huge_quarantined_file_keeps_only_its_head(spool: Spool) -> None:
    from mssendmail.spool.intake import QUARANTINE_KEEP

    planted = spool.path(MAILDROP, new_id())
    with open(planted, "wb") as fh:
        fh.write(b"H" * 10)
        fh.truncate(MAX + 4 * QUARANTINE_KEEP)  # sparse; "too big"
    assert pickup(spool, MAX) == []
    [entry] = [n for n in os.listdir(spool.dir(CORRUPT)) if not n.endswith(".reason.json")]
    kept = Path(spool.dir(CORRUPT), entry).read_bytes()
    assert len(kept) == QUARANTINE_KEEP and kept.startswith(b"H" * 10)
    info = json.loads(Path(spool.dir(CORRUPT), entry + ".reason.json").read_text())
    assert info["size"] == MAX + 4 * QUARANTINE_KEEP and "too big" in info["reason"]
