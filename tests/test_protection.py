"""Daily recipient budget and pacing per mailbox, on a fake clock (delivery.protection)."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from mssendmail.admin import listing, safety, stats
from mssendmail.config import Config
from mssendmail.delivery.attempt import Context, Outcome, Policy, deliver
from mssendmail.delivery.pickup import pickup
from mssendmail.errors import PermanentFailure
from mssendmail.spool import budget
from mssendmail.spool.layout import DEFERRED, QUEUE, Spool, init_tree
from mssendmail.submission.writer import Submission, make_envelope
from mssendmail.transport import Delivered

MAILBOX = "relay@example.com"


class Clock:
    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t


class Recording:
    """Sends succeed; remembers when (on the fake clock) and what."""

    def __init__(self, clock: Clock, fail: Exception | None = None) -> None:
        self.clock = clock
        self.fail = fail
        self.times: list[float] = []

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        if self.fail is not None:
            raise self.fail
        self.times.append(self.clock())
        return Delivered(202, "r")

    def close(self) -> None:
        pass


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    init_tree(str(tmp_path / "queue"))
    return Spool(str(tmp_path / "queue"))


def make_ctx(spool: Spool, transport: Any, clock: Clock, **cfg: str) -> Context:
    return Context(
        spool=spool,
        cfg=Config({"SENDER": MAILBOX, "QUEUE_DIR": spool.root, **cfg}),
        transport=transport,
        policy=Policy(retry_min=60, retry_max=3600, max_age=5 * 86400, max_attempts=None),
        now=clock,
        rng=random.Random(1),
    )


def queue(spool: Spool, n: int) -> list[str]:
    for i in range(n):
        with Submission(spool, 1 << 20) as sub:
            sub.write(f"To: a@example.org\nSubject: m{i}\n\nx\n".encode())
            sub.commit(make_envelope("", ["a@example.org"]))
    ids = pickup(spool, 1 << 20)
    assert len(ids) == n
    return sorted(ids)


def due(spool: Spool, now: float) -> list[tuple[str, str]]:
    items = [(q, QUEUE) for q in spool.ids(QUEUE)]
    items += [
        (q, DEFERRED)
        for q in spool.ids(DEFERRED)
        if os.stat(spool.path(DEFERRED, q)).st_mtime <= now
    ]
    return sorted(items)


def run_until_idle(ctx: Context, clock: Clock, limit: float) -> None:
    """What the worker loop does, on the fake clock: try what is due, then jump ahead."""
    while clock.t < limit:
        for qid, area in due(ctx.spool, clock.t):
            deliver(ctx, qid, area)
        waiting = [os.stat(ctx.spool.path(DEFERRED, q)).st_mtime for q in ctx.spool.ids(DEFERRED)]
        if not waiting:
            return
        clock.t = max(clock.t, min(waiting))


def test_budget_lets_exactly_the_limit_out_and_the_rest_waits(spool: Spool) -> None:
    clock = Clock()
    transport = Recording(clock)
    ctx = make_ctx(spool, transport, clock, DAILY_RECIPIENT_LIMIT="100")
    queue(spool, 150)
    outcomes = [deliver(ctx, qid, area) for qid, area in due(spool, clock.t)]
    assert outcomes.count(Outcome.SENT) == 100
    assert outcomes.count(Outcome.DEFERRED) == 50
    assert len(transport.times) == 100
    # Visible in list and stats, as a wait, not a failure.
    rows = [r for r in listing.collect(spool) if r.state == "deferred"]
    assert len(rows) == 50
    assert {r.error_code for r in rows} == {"DailyRecipientLimit"}
    assert {r.attempts for r in rows} == {0}
    assert all("100 of 100" in (r.error or "") for r in rows)
    snapshot = stats.collect(spool, now=clock.t)
    assert snapshot.waiting == {"DailyRecipientLimit": 50}
    assert snapshot.budgets == {MAILBOX: [100, 100]}
    assert snapshot.last_failure is None
    text = "\n".join(stats.render(snapshot, now=clock.t))
    assert (
        "100/100 recipients in 24 h (100%)" in text and "50 deferred by DailyRecipientLimit" in text
    )
    prom = stats.prometheus(snapshot)
    assert f'mssendmail_recipients_24h{{mailbox="{MAILBOX}"}} 100' in prom
    assert 'mssendmail_waiting{reason="DailyRecipientLimit"} 50' in prom
    assert [r.status for r in safety.check_budget(spool, clock.t)] == ["WARN"]
    # Nothing more goes out inside the window; all of it after the window.
    clock.t += 3600
    for qid, area in due(spool, clock.t):
        assert deliver(ctx, qid, area) == Outcome.DEFERRED
    assert len(transport.times) == 100
    run_until_idle(ctx, clock, clock.t + 2 * 86400)
    assert len(transport.times) == 150
    assert min(transport.times[100:]) >= transport.times[0] + 86400
    assert os.listdir(spool.dir("dead")) == []


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_warning_at_80_percent_once(spool: Spool) -> None:
    clock = Clock()
    ctx = make_ctx(spool, Recording(clock), clock, DAILY_RECIPIENT_LIMIT="10")
    queue(spool, 10)
    handler = Collect()
    logger = logging.getLogger("mssendmail.delivery.protection")
    logger.addHandler(handler)
    try:
        for qid, area in due(spool, clock.t):
            deliver(ctx, qid, area)
    finally:
        logger.removeHandler(handler)
    warnings = [m for m in handler.messages if "budget-warning" in m]
    assert len(warnings) == 1 and "used=8" in warnings[0]


def test_a_refused_send_gives_its_recipients_back(spool: Spool) -> None:
    clock = Clock()
    ctx = make_ctx(spool, Recording(clock, PermanentFailure("no")), clock)
    [qid] = queue(spool, 1)
    assert deliver(ctx, qid, QUEUE) == Outcome.DEAD
    assert budget.usage(spool, clock.t) == {MAILBOX: (0, 10000)}


def test_pacing_spreads_a_burst(spool: Spool) -> None:
    clock = Clock()
    transport = Recording(clock)
    ctx = make_ctx(spool, transport, clock, MAILBOX_RATE="30")
    queue(spool, 60)
    start = clock.t
    run_until_idle(ctx, clock, start + 3600)
    times = sorted(transport.times)
    assert len(times) == 60
    assert times[-1] - times[0] >= 118
    assert min(b - a for a, b in itertools.pairwise(times)) >= 2 - 1e-6
    rows = listing.collect(spool)
    assert rows == []


def test_pacing_waits_are_shown_and_cost_no_attempt(spool: Spool) -> None:
    clock = Clock()
    ctx = make_ctx(spool, Recording(clock), clock, MAILBOX_RATE="6")
    queue(spool, 3)
    for qid, area in due(spool, clock.t):
        deliver(ctx, qid, area)
    rows = [r for r in listing.collect(spool) if r.state == "deferred"]
    assert [r.error_code for r in rows] == ["MailboxRate", "MailboxRate"]
    assert sorted(r.next_attempt or 0 for r in rows) == [clock.t + 10, clock.t + 20]


def _reserve_many(root: str, n: int, out: Any) -> None:
    spool = Spool(root)
    ok = sum(budget.reserve(spool, MAILBOX, 1, 150, time.time()).ok for _ in range(n))
    out.put(ok)


def test_the_budget_holds_across_processes(spool: Spool) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(spool.root, 100, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert out.get(timeout=5) + out.get(timeout=5) == 150
    assert budget.usage(spool, time.time())[MAILBOX] == (150, 150)
