"""One delivery attempt: every outcome class, with a scripted transport and a fake clock."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mssendmail.config import Config
from mssendmail.delivery import outcome
from mssendmail.delivery.attempt import Context, Outcome, Policy, deliver
from mssendmail.delivery.pickup import pickup
from mssendmail.errors import (
    ConfigurationFailure,
    PermanentFailure,
    SlowDown,
    TemporaryFailure,
    Throttled,
)
from mssendmail.spool import meta, pause
from mssendmail.spool.layout import ACTIVE, DEAD, DEFERRED, QUEUE, SENT, Spool
from mssendmail.submission.writer import Submission, make_envelope
from mssendmail.transport import Delivered

T0 = float(int(time.time()))  # pickup stamps real time; ages are measured from it


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Scripted:
    """A transport that plays back errors, then succeeds; records what it was sent."""

    def __init__(self, *script: Exception) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        with self.lock:
            if self.script:
                raise self.script.pop(0)
            self.sent.append((mailbox, mime))
        return Delivered(202, "req-1")

    def close(self) -> None:
        pass


def make_ctx(spool: Spool, transport: Any, clock: Clock, **cfg: str) -> Context:
    values = {"SENDER": "relay@example.com", "QUEUE_DIR": spool.root, **cfg}
    return Context(
        spool=spool,
        cfg=Config(values),
        transport=transport,
        policy=Policy(retry_min=60, retry_max=3600, max_age=5 * 86400, max_attempts=None),
        now=clock,
        rng=random.Random(7),
    )


def queue_one(spool: Spool, body: bytes = b"Subject: hi\n\nbody\n") -> str:
    with Submission(spool, 1 << 20) as sub:
        sub.write(body)
        qid = sub.commit(make_envelope("app@example.com", ["a@example.com"]))
    assert pickup(spool, 1 << 20) == [qid]
    return qid


def test_success_writes_sent_record_and_removes_message(spool: Spool) -> None:
    clock, transport = Clock(), Scripted()
    qid = queue_one(spool)
    assert deliver(make_ctx(spool, transport, clock), qid, QUEUE) is Outcome.SENT
    [(mailbox, mime)] = transport.sent
    assert mailbox == "relay@example.com"
    assert b"\r\n" in mime and b"To: a@example.com" not in mime.split(b"\r\n\r\n")[1]
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["request_id"] == "req-1" and record["attempts"] == 1
    for area in (QUEUE, ACTIVE, DEFERRED, DEAD):
        assert spool.ids(area) == []
    assert not meta.exists(spool, qid)


def test_sent_record_reuses_the_message_file_and_drops_the_body(spool: Spool) -> None:
    qid = queue_one(spool, b"Subject: hi\n\n" + b"secret body\n" * 100)
    inode = os.stat(spool.path(QUEUE, qid)).st_ino
    assert deliver(make_ctx(spool, Scripted(), Clock()), qid, QUEUE) is Outcome.SENT
    st = os.stat(spool.sent_path(qid))
    assert st.st_ino == inode  # no new file, no unlink: see outcome.sent
    assert b"secret body" not in Path(spool.sent_path(qid)).read_bytes()
    assert os.listdir(spool.dir(SENT)) == [f"{qid}.json"]


@pytest.mark.parametrize("left", ["message", "empty", "record"])
def test_sweep_sent_finishes_a_record_a_crash_left_half_made(spool: Spool, left: str) -> None:
    qid = queue_one(spool)
    parked = Path(spool.path(SENT, qid))
    os.rename(spool.path(QUEUE, qid), parked)
    if left == "empty":
        parked.write_bytes(b"")
    elif left == "record":
        parked.write_text(json.dumps({"id": qid, "request_id": "req-9"}))
    assert deliver(make_ctx(spool, Scripted(), Clock()), qid, QUEUE) is Outcome.SKIPPED
    outcome.sweep_sent(spool, T0)
    assert os.listdir(spool.dir(SENT)) == [f"{qid}.json"]
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["id"] == qid
    assert ("request_id" in record) == (left == "record")  # a whole record is kept as is


def test_temporary_failure_defers_with_backoff_on_disk(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    ctx = make_ctx(spool, Scripted(TemporaryFailure("boom", status=503)), clock)
    assert deliver(ctx, qid, QUEUE) is Outcome.DEFERRED
    assert spool.ids(DEFERRED) == [qid]
    due = os.stat(spool.path(DEFERRED, qid)).st_mtime
    assert T0 + 48 <= due <= T0 + 60
    state = meta.read(spool, qid)
    assert state["attempts"] == 1 and state["last_error"]["status"] == 503


def test_backoff_doubles_per_attempt(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    ctx = make_ctx(spool, Scripted(*[TemporaryFailure("x", status=500) for _ in range(4)]), clock)
    area = QUEUE
    delays = []
    for _ in range(4):
        assert deliver(ctx, qid, area) is Outcome.DEFERRED
        due = os.stat(spool.path(DEFERRED, qid)).st_mtime
        delays.append(due - clock.t)
        clock.t = due
        area = DEFERRED
    for n, delay in enumerate(delays):
        assert 60 * 2**n * 0.8 <= delay <= 60 * 2**n + 0.01


def test_retry_after_longer_than_backoff_wins_and_pauses_mailbox(spool: Spool) -> None:
    clock = Clock()
    first, second = queue_one(spool), queue_one(spool)
    transport = Scripted(Throttled("slow down", status=429, retry_after=600))
    ctx = make_ctx(spool, transport, clock)
    assert deliver(ctx, first, QUEUE) is Outcome.DEFERRED
    assert os.stat(spool.path(DEFERRED, first)).st_mtime == pytest.approx(T0 + 600)
    # the second message to the same mailbox is not even tried
    assert deliver(ctx, second, QUEUE) is Outcome.DEFERRED
    assert transport.sent == []
    assert os.stat(spool.path(DEFERRED, second)).st_mtime == pytest.approx(T0 + 600)
    assert meta.attempts(meta.read(spool, second)) == 0


def test_permanent_failure_dead_letters_with_reason(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    err = PermanentFailure("bad rcpt", status=400, code="ErrorInvalidRecipients", request_id="r9")
    assert deliver(make_ctx(spool, Scripted(err), clock), qid, QUEUE) is Outcome.DEAD
    assert spool.ids(DEAD) == [qid]
    reason = json.loads(Path(spool.reason_path(DEAD, qid)).read_text())
    assert reason["code"] == "ErrorInvalidRecipients"
    assert reason["status"] == 400 and reason["request_id"] == "r9"
    assert reason["time"] == T0


def test_configuration_failure_pauses_queue_and_keeps_message(spool: Spool) -> None:
    clock = Clock()
    qid, other = queue_one(spool), queue_one(spool)
    transport = Scripted(ConfigurationFailure("invalid_client", status=401, code="invalid_client"))
    ctx = make_ctx(spool, transport, clock)
    assert deliver(ctx, qid, QUEUE) is Outcome.PAUSED
    assert sorted(spool.ids(QUEUE)) == sorted([qid, other])
    assert spool.ids(DEAD) == []
    assert pause.queue_paused_until(spool) > T0
    assert deliver(ctx, other, QUEUE) is Outcome.PAUSED
    assert transport.sent == []
    clock.t = pause.queue_paused_until(spool) + 1
    assert deliver(ctx, other, QUEUE) is Outcome.SENT
    assert pause.queue_paused_until(spool) == 0.0


def test_slowdown_defers_for_retry_max(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    err = SlowDown("quota", status=429, code="ErrorQuotaExceeded")
    assert deliver(make_ctx(spool, Scripted(err), clock), qid, QUEUE) is Outcome.DEFERRED
    assert os.stat(spool.path(DEFERRED, qid)).st_mtime >= T0 + 3600


def test_max_age_dead_letters_with_last_error(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    clock.t = T0 + 6 * 86400  # past MAX_AGE (5 days)
    err = TemporaryFailure("still down", status=503)
    assert deliver(make_ctx(spool, Scripted(err), clock), qid, QUEUE) is Outcome.DEAD
    reason = json.loads(Path(spool.reason_path(DEAD, qid)).read_text())
    assert reason["why"] == "too old" and reason["status"] == 503


def test_max_attempts_dead_letters(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    ctx = make_ctx(spool, Scripted(*[TemporaryFailure("x", status=500)] * 3), clock)
    ctx.policy.max_attempts = 2
    assert deliver(ctx, qid, QUEUE) is Outcome.DEFERRED
    assert deliver(ctx, qid, DEFERRED) is Outcome.DEAD


def test_a_sent_record_prevents_a_resend_after_a_crash(spool: Spool) -> None:
    clock, transport = Clock(), Scripted()
    qid = queue_one(spool)
    Path(spool.sent_path(qid)).write_text(json.dumps({"id": qid}))
    assert deliver(make_ctx(spool, transport, clock), qid, QUEUE) is Outcome.SENT
    assert transport.sent == []
    assert spool.ids(QUEUE) == []


def test_damaged_queue_file_is_dead_lettered_not_sent(spool: Spool) -> None:
    clock, transport = Clock(), Scripted()
    qid = queue_one(spool)
    path = Path(spool.path(QUEUE, qid))
    os.chmod(path, 0o640)
    path.write_bytes(path.read_bytes().replace(b"body", b"BODY"))
    assert deliver(make_ctx(spool, transport, clock), qid, QUEUE) is Outcome.DEAD
    assert transport.sent == []


def test_claimed_elsewhere_is_skipped(spool: Spool) -> None:
    from mssendmail.spool.claim import claim

    qid = queue_one(spool)
    held = claim(spool, qid, QUEUE)
    assert deliver(make_ctx(spool, Scripted(), Clock()), qid, QUEUE) is Outcome.SKIPPED
    assert held is not None
    held.release()


def test_dead_letter_notice_is_queued_once_and_never_for_a_notice(spool: Spool) -> None:
    from mssendmail.delivery.notice_hook import notifier
    from mssendmail.spool.record import read_message, verify

    clock = Clock()
    ctx = make_ctx(spool, None, clock, DEAD_LETTER_NOTIFY="postmaster@example.com")
    ctx.notify = notifier(ctx.cfg, spool)
    err = PermanentFailure("denied", status=403, code="ErrorSendAsDenied")
    ctx.transport = Scripted(err)
    qid = queue_one(spool, b"Subject: original\nTo: a@example.com\n\nsecret body\n")
    assert deliver(ctx, qid, QUEUE) is Outcome.DEAD
    [notice_id] = pickup(spool, 1 << 20)
    with open(spool.path(QUEUE, notice_id), "rb") as fh:
        envelope, n = verify(fh)
        notice = read_message(fh, n)
    assert envelope["recipients"] == ["postmaster@example.com"]
    assert b"ErrorSendAsDenied" in notice and b"Subject: original" in notice
    assert b"secret body" not in notice
    # the notice itself fails permanently: no notice about the notice
    ctx.transport = Scripted(PermanentFailure("denied", status=403, code="ErrorSendAsDenied"))
    assert deliver(ctx, notice_id, QUEUE) is Outcome.DEAD
    assert pickup(spool, 1 << 20) == []


def test_requeued_mail_gets_a_fresh_lifetime(spool: Spool) -> None:
    clock = Clock()
    qid = queue_one(spool)
    clock.t = T0 + 6 * 86400
    meta.write(spool, qid, {"requeued": clock.t - 60, "attempts": 0})
    err = TemporaryFailure("down", status=503)
    assert deliver(make_ctx(spool, Scripted(err), clock), qid, QUEUE) is Outcome.DEFERRED


def test_permanent_failure_counts_the_attempt(spool: Spool) -> None:
    qid = queue_one(spool)
    err = PermanentFailure("bad", status=400, code="ErrorInvalidRecipients")
    deliver(make_ctx(spool, Scripted(err), Clock()), qid, QUEUE)
    reason = json.loads(Path(spool.reason_path(DEAD, qid)).read_text())
    assert reason["attempts"] == 1


def test_all_recipients_aliased_away_is_discarded_not_sent(spool: Spool, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("nobody: /dev/null\n")
    transport = Scripted()
    with Submission(spool, 1 << 20) as sub:
        sub.write(b"Subject: x\n\nbody\n")
        qid = sub.commit(make_envelope("", ["nobody"]))
    pickup(spool, 1 << 20)
    ctx = make_ctx(spool, transport, Clock(), ALIASES=str(aliases))
    assert deliver(ctx, qid, QUEUE) is Outcome.SENT
    assert transport.sent == []
    assert json.loads(Path(spool.sent_path(qid)).read_text())["discarded"] is True


def test_mime_repairs_are_logged_recorded_and_counted(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    clock, transport = Clock(), Scripted()
    qid = queue_one(spool, b"Subject: Gr\xc3\xbc\xc3\x9fe\n\n" + b"\xc3\xa9" * 600 + b"\n")
    ctx = make_ctx(spool, transport, clock)
    with caplog.at_level("INFO", logger="mssendmail"):
        assert deliver(ctx, qid, QUEUE) is Outcome.SENT
    assert "mime_fixed=charset,mime,qp,rfc2047" in caplog.text
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["mime_fixed"] == "charset,mime,qp,rfc2047"
    assert ctx.mime_fixes.snapshot() == {"charset": 1, "mime": 1, "qp": 1, "rfc2047": 1}
    [(_, mime)] = transport.sent
    assert max(len(line) for line in mime.split(b"\r\n")) <= 998
