"""Idempotent retries against the strict fake Graph: unknown outcomes are looked up, not resent."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mssendmail import transport as transports
from mssendmail.config import Config
from mssendmail.delivery import idempotency
from mssendmail.delivery.attempt import Context, MailboxGate, Outcome, RetryPolicy, deliver
from mssendmail.delivery.pickup import pickup
from mssendmail.spool import meta
from mssendmail.spool.claim import claim
from mssendmail.spool.layout import ACTIVE, DEFERRED, QUEUE, STATE, Spool, init_tree
from mssendmail.spool.layout import SENTITEMS_DENIED_FILE as DENIED_FILE
from mssendmail.submission.writer import Submission, make_envelope
from mssendmail.transport import Delivered
from tests.fakegraph import FakeGraph, Fault, running
from tests.fakegraph_large import FilePart, large_state, make_message

SENDER = "relay@contoso.example"
READ = ["Mail.Send", "Mail.ReadBasic.All", "Mail.ReadWrite"]


@pytest.fixture(autouse=True)
def forget_denials() -> Iterator[None]:
    idempotency._denied.clear()
    yield
    idempotency._denied.clear()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(tmp_path / "fake", monkeypatch, roles=READ) as server:
        server.sent_items_delay = 0.3
        yield server


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    init_tree(str(tmp_path / "queue"))
    return Spool(str(tmp_path / "queue"))


def make_ctx(spool: Spool, fake: FakeGraph, **extra: str) -> Context:
    cfg = Config(
        {
            **fake.config(),
            "QUEUE_DIR": spool.root,
            "SENDER": SENDER,
            "GRAPH_TIMEOUT": "2s",
            "SENT_ITEMS_DELAY": "1s",
            **extra,
        }
    )
    return Context(
        spool=spool,
        cfg=cfg,
        transport=transports.from_config(cfg),
        policy=RetryPolicy(retry_min=0.1, retry_max=0.2, max_age=86400, max_attempts=None),
        gate=MailboxGate(),
        rng=random.Random(3),
    )


def queue(spool: Spool, subject: str, body: bytes = b"body\n") -> str:
    with Submission(spool, 200 << 20) as sub:
        sub.write(f"To: alice@example.org\nSubject: {subject}\n\n".encode() + body)
        qid = sub.commit(make_envelope("", ["alice@example.org"]))
    assert pickup(spool, 200 << 20) == [qid]
    return qid


def subjects(fake: FakeGraph) -> list[str]:
    return [str(m.subject) for m in fake.messages]


def retry_now(ctx: Context, qid: str) -> Outcome:
    """The next attempt of a deferred message, at whatever time it is now."""
    return deliver(ctx, qid, DEFERRED)


@pytest.mark.parametrize(
    "fault", [Fault.error(504, accept=True), Fault.reset(accept=True), Fault.hang(5, accept=True)]
)
def test_accepted_then_failed_is_found_not_resent(
    spool: Spool, fake: FakeGraph, fault: Fault
) -> None:
    ctx = make_ctx(spool, fake)
    qid = queue(spool, "m1")
    fake.plan({"m1": fault})
    before = time.time()
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    state = meta.read(spool, qid)  # on disk before the next attempt
    assert state["unknown"]["since"] >= before - 1
    time.sleep(0.5)  # the copy is filed (0.3 s), before SENT_ITEMS_DELAY
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["m1"]
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["outcome"] == "sent-earlier"
    assert fake.lookups == 1


def test_not_found_waits_for_the_delay_then_sends_again(spool: Spool, fake: FakeGraph) -> None:
    ctx = make_ctx(spool, fake)
    qid = queue(spool, "m1")
    fake.script(Fault.error(504))  # refused for real: nothing was sent
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    assert retry_now(ctx, qid) == Outcome.DEFERRED  # not found, but too early to trust that
    assert subjects(fake) == [] and fake.lookups == 1
    time.sleep(1.1)
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["m1"] and fake.lookups == 2
    assert "outcome" not in json.loads(Path(spool.sent_path(qid)).read_text())


def test_a_copy_that_is_still_on_its_way_is_found_later(spool: Spool, fake: FakeGraph) -> None:
    fake.sent_items_delay = 0.6
    ctx = make_ctx(spool, fake)
    qid = queue(spool, "m1")
    fake.plan({"m1": Fault.reset(accept=True)})
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    assert retry_now(ctx, qid) == Outcome.DEFERRED  # looked too early: not there yet
    time.sleep(1.1)
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["m1"]


def test_a_known_refusal_is_not_unknown(spool: Spool, fake: FakeGraph) -> None:
    ctx = make_ctx(spool, fake)
    qid = queue(spool, "m1")
    fake.script(Fault.error(429, retry_after="0"))
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    assert "unknown" not in meta.read(spool, qid)
    assert retry_now(ctx, qid) == Outcome.SENT
    assert fake.lookups == 0


def test_without_the_permission_it_resends_and_check_can_tell(
    spool: Spool, fake: FakeGraph
) -> None:
    fake.roles = ["Mail.Send"]
    ctx = make_ctx(spool, fake)
    qid = queue(spool, "m1")
    fake.plan({"m1": Fault.error(504, accept=True)})
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    assert retry_now(ctx, qid) == Outcome.SENT  # 403 on the lookup: behaves as before
    assert subjects(fake) == ["m1", "m1"]
    denied = json.loads(Path(spool.path(STATE, DENIED_FILE)).read_text())
    assert denied["mailbox"] == SENDER
    # Known denied: the next unknown outcome is resent without asking again.
    qid2 = queue(spool, "m2")
    fake.plan({"m2": Fault.error(504, accept=True)})
    assert deliver(ctx, qid2, QUEUE) == Outcome.DEFERRED
    lookups = len([r for r in fake.requests if "sentitems" in r.path])
    assert retry_now(ctx, qid2) == Outcome.SENT
    assert len([r for r in fake.requests if "sentitems" in r.path]) == lookups == 1


def test_a_dead_workers_claim_is_marked_unknown(spool: Spool, fake: FakeGraph) -> None:
    qid = queue(spool, "m1")
    held = claim(spool, qid, QUEUE)
    assert held is not None
    held.release()  # the kernel drops a dead process's flock just like this
    assert idempotency.recover(spool, time.time()) == [qid]
    state = meta.read(spool, qid)
    assert state["unknown"]["why"] == "claimed by a worker that died"
    assert os.listdir(spool.dir(ACTIVE)) == []
    ctx = make_ctx(spool, fake)
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED  # not found, too early
    time.sleep(1.1)
    assert deliver(ctx, qid, DEFERRED) == Outcome.SENT
    assert subjects(fake) == ["m1"]


def test_a_send_that_raises_a_bug_after_graph_took_it_is_looked_up(
    spool: Spool, fake: FakeGraph
) -> None:
    ctx = make_ctx(spool, fake)
    real_send = ctx.transport.send

    def send_then_crash(mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        real_send(mailbox, mime, queue_id)  # Graph answered 202
        raise RuntimeError("a bug between the answer and the outcome")

    ctx.transport.send = send_then_crash  # type: ignore[method-assign]
    qid = queue(spool, "m1")
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED  # counted as a crash (poison.py)
    state = meta.read(spool, qid)
    assert state["crashes"] == 1
    assert state["unknown"]["why"] == "the send raised an unexpected error"
    ctx.transport.send = real_send  # type: ignore[method-assign]
    time.sleep(0.5)  # the copy is filed (0.3 s)
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["m1"]
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["outcome"] == "sent-earlier"


def test_a_bug_after_graphs_202_before_the_sent_record_is_looked_up(
    spool: Spool, fake: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mssendmail.delivery import attempt as attempt_mod

    ctx = make_ctx(spool, fake)
    real = attempt_mod._record_sent

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug between the 202 and the sent record")

    monkeypatch.setattr(attempt_mod, "_record_sent", crash)
    qid = queue(spool, "m1")
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED  # counted as a crash (poison.py)
    state = meta.read(spool, qid)
    assert state["crashes"] == 1
    assert state["unknown"]["why"] == "accepted, then recording raised"
    monkeypatch.setattr(attempt_mod, "_record_sent", real)
    time.sleep(0.5)  # the copy is filed (0.3 s)
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["m1"]  # looked up, not sent twice
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert record["outcome"] == "sent-earlier"


def large(subject: str) -> bytes:
    data = os.urandom(3_200_000)
    return make_message([FilePart("big.bin", "application/octet-stream", data)], subject=subject)


def _queue_raw(spool: Spool, mime: bytes) -> str:
    with Submission(spool, 200 << 20) as sub:
        sub.write(mime)
        qid = sub.commit(make_envelope("", ["alice@example.org"]))
    assert pickup(spool, 200 << 20) == [qid]
    return qid


@pytest.mark.parametrize("accepted", [True, False])
def test_large_unknown_send_checks_the_draft(spool: Spool, fake: FakeGraph, accepted: bool) -> None:
    ctx = make_ctx(spool, fake, SENT_ITEMS_DELAY="0s")
    qid = _queue_raw(spool, large("big").replace(b"\r\n", b"\n"))
    fake.plan({"big": Fault.error(504, accept=accepted)})
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    draft_id = meta.read(spool, qid)["unknown"]["draft_id"]
    state = large_state(fake)
    assert draft_id not in state.deleted  # kept: it tells whether /send went through
    assert retry_now(ctx, qid) == Outcome.SENT
    assert subjects(fake) == ["big"]
    record = json.loads(Path(spool.sent_path(qid)).read_text())
    assert (record.get("outcome") == "sent-earlier") == accepted
    assert (draft_id in state.deleted) == (not accepted)
    assert fake.lookups == 0  # the draft answered, not Sent Items


def test_a_message_id_that_cannot_be_looked_up_is_resent(spool: Spool, fake: FakeGraph) -> None:
    ctx = make_ctx(spool, fake)
    with Submission(spool, 1 << 20) as sub:
        sub.write(b"To: alice@example.org\nSubject: m1\nMessage-ID: no-brackets@x\n\nbody\n")
        qid = sub.commit(make_envelope("", ["alice@example.org"]))
    assert pickup(spool, 1 << 20) == [qid]
    fake.plan({"m1": Fault.error(504, accept=True)})
    assert deliver(ctx, qid, QUEUE) == Outcome.DEFERRED
    assert retry_now(ctx, qid) == Outcome.SENT  # no lookup possible: as before, a resend
    assert subjects(fake) == ["m1", "m1"] and fake.lookups == 0


def test_a_bad_mailbox_rate_stops_the_worker_at_start(tmp_path: Path) -> None:
    from mssendmail.delivery.worker import main

    cfg = tmp_path / "w.env"
    cfg.write_text(
        f"QUEUE_DIR={tmp_path / 'queue'}\nTRANSPORT=file\nOUTBOX_DIR={tmp_path}\n"
        "SENDER=relay@example.com\nMAILBOX_RATE=fast\n"
    )
    init_tree(str(tmp_path / "queue"))
    assert main(["--once", "--config", str(cfg)]) == 78
