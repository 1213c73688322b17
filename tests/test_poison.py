"""One poison message never stalls the others (issue 12, finding 2).

Each kind of poison the review found, and an unknown bug, must end in dead/
within its first few attempts, with the exception class and a one-line
reason, while the worker goes on dispatching without a pause.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from mssendmail.delivery import poison
from mssendmail.delivery.attempt import Outcome, deliver
from mssendmail.delivery.limits import MAX_COMMENT_DEPTH, comments_too_deep
from mssendmail.delivery.pickup import pickup
from mssendmail.delivery.prepare import prepare
from mssendmail.errors import DataError, PermanentFailure
from mssendmail.graph.large import plan
from mssendmail.spool import meta, record
from mssendmail.spool.layout import CORRUPT, DEAD, DEFERRED, QUEUE, Spool, new_id
from mssendmail.submission.writer import Submission, make_envelope
from mssendmail.transport import Delivered
from tests.test_deliver import Clock, Scripted, make_ctx, queue_one

NESTED_FROM = b"From: " + b"(" * 600 + b"x" + b")" * 600 + b" <a@example.com>\n"


def plant_in_queue(spool: Spool, body: bytes, **envelope: Any) -> str:
    """A record straight in queue/, as one queued before pickup validated it."""
    qid = new_id()
    env = {**make_envelope("app@example.com", ["a@example.com"]), **envelope}
    fd = os.open(spool.path(QUEUE, qid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        writer = record.RecordWriter(fd)
        writer.write(body)
        writer.finish(env)
    finally:
        os.close(fd)
    return qid


def reason(spool: Spool, qid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(spool.reason_path(DEAD, qid)).read_text())
    return data


def test_comment_depth_check_is_a_loop_and_lets_real_mail_through() -> None:
    assert not comments_too_deep('"a (((( b" <a@x.y> (one (two))')
    assert not comments_too_deep("(" * MAX_COMMENT_DEPTH + ")" * MAX_COMMENT_DEPTH)
    assert comments_too_deep("(" * (MAX_COMMENT_DEPTH + 1))
    assert comments_too_deep("(" * 1_000_000)  # no recursion, whatever the depth
    assert not comments_too_deep("\\(" * 1000)  # escaped parentheses are no comments


def test_prepare_refuses_600_nested_comments_without_recursing() -> None:
    env = make_envelope("app@example.com", ["a@example.com"])
    with pytest.raises(DataError, match="nested"):
        prepare(NESTED_FROM + b"Subject: x\n\nbody\n", env, _cfg(), "q1")
    depth = MAX_COMMENT_DEPTH
    ok = b"From: " + b"(" * depth + b")" * depth + b" a@example.com\nSubject: x\n\nb\n"
    assert prepare(ok, env, _cfg(), "q2").recipients == ["a@example.com"]


def _cfg() -> Any:
    from mssendmail.config import Config

    return Config({"SENDER": "relay@example.com"})


def test_nested_comments_from_header_is_dead_on_its_first_attempt(spool: Spool) -> None:
    qid = queue_one(spool, NESTED_FROM + b"Subject: x\n\nbody\n")
    transport = Scripted()
    assert deliver(make_ctx(spool, transport, Clock()), qid, QUEUE) is Outcome.DEAD
    assert transport.sent == []
    assert "nested" in reason(spool, qid)["message"]


def test_nested_content_type_comments_are_refused_by_plan() -> None:
    part_type = b"Content-Type: text/plain " + b"(" * 600 + b")" * 600
    mime = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        + part_type
        + b"\r\n\r\nhello\r\n--b--\r\n"
    )
    with pytest.raises(PermanentFailure, match="nested"):
        plan(mime)


@pytest.mark.parametrize("bad", [1e20, math.nan, math.inf, -1.0, 10**400])
def test_a_hostile_time_is_quarantined_at_pickup(spool: Spool, bad: Any) -> None:
    with Submission(spool, 1 << 20) as sub:
        sub.write(b"Subject: t\n\nx\n")
        env = make_envelope("app@example.com", ["a@example.com"])
        env["time"] = bad
        sub.commit(env)
    assert pickup(spool, 1 << 20) == []
    reasons = [n for n in os.listdir(spool.dir(CORRUPT)) if n.endswith(".reason.json")]
    assert len(reasons) == 1


@pytest.mark.parametrize("bad", [1e20, math.nan, math.inf])
def test_a_hostile_time_already_queued_is_dead_on_its_first_attempt(
    spool: Spool, bad: float
) -> None:
    qid = plant_in_queue(spool, b"Subject: t\n\nx\n", time=bad)
    assert deliver(make_ctx(spool, Scripted(), Clock()), qid, QUEUE) is Outcome.DEAD
    assert "time" in reason(spool, qid)["message"]


class Crashing(Scripted):
    """Raises an exception nobody classified for messages holding a marker."""

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        if b"POISON" in mime:
            raise RecursionError("maximum recursion depth exceeded while calling a Python object")
        return super().send(mailbox, mime, queue_id)


def test_an_unknown_bug_is_counted_and_dead_lettered_at_the_third_crash(spool: Spool) -> None:
    clock, transport = Clock(), Crashing()
    ctx = make_ctx(spool, transport, clock)
    bad = queue_one(spool, b"Subject: POISON\n\nx\n")
    area = QUEUE
    for n in range(1, poison.CRASH_LIMIT):
        assert deliver(ctx, bad, area) is Outcome.DEFERRED
        state = meta.read(spool, bad)
        assert state["crashes"] == n and state["attempts"] == n
        assert state["last_error"]["code"] == "RecursionError"
        due = os.stat(spool.path(DEFERRED, bad)).st_mtime
        assert clock.t < due <= clock.t + poison.CRASH_DELAY * n + 1
        clock.t = due
        area = DEFERRED
    assert deliver(ctx, bad, area) is Outcome.DEAD
    why = reason(spool, bad)
    assert why["code"] == "RecursionError"
    assert why["message"].startswith("RecursionError: maximum recursion depth")
    assert "\n" not in why["message"]
    good = queue_one(spool)
    assert deliver(ctx, good, QUEUE) is Outcome.SENT


def test_disk_errors_still_stall_and_are_not_counted(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    qid = queue_one(spool)

    class Full(Scripted):
        def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        deliver(make_ctx(spool, Full(), Clock()), qid, QUEUE)
    assert spool.ids(QUEUE) == [qid]  # put back, untouched
    assert poison.crashes(meta.read(spool, qid)) == 0


def test_the_worker_does_not_pause_dispatch_for_a_crash(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mssendmail.delivery.worker import Worker

    ctx = make_ctx(spool, Crashing(), Clock())
    bad = queue_one(spool, b"Subject: POISON\n\nx\n")
    good = [queue_one(spool) for _ in range(5)]
    worker = Worker(ctx, concurrency=2, once=True)
    assert worker.run_once() == 0
    assert worker.stall_until == 0.0
    assert spool.ids(DEFERRED) == [bad]
    assert all(os.path.exists(spool.sent_path(q)) for q in good)
