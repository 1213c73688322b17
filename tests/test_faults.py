"""Fault suite: the real Graph transport, real msal and the strict fake Graph misbehaving.

Each in-process test drives ``deliver()`` with a fake clock (Context.now)
and a seeded random source, so the backoff schedule is read off the
deferred/ mtimes exactly; the fake records every request, so we also see
that each attempt made exactly one request (no hidden retries that could
send twice). The subprocess tests check the same against the real worker
with recorded request times. No test lets more than 4 requests be in
flight at once (checked on the fake after every test).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail import config
from mssendmail.delivery.attempt import Context, Outcome, Policy, deliver
from mssendmail.delivery.pickup import pickup
from mssendmail.delivery.retry import JITTER_LOW
from mssendmail.delivery.worker import Worker
from mssendmail.graph.transport import GraphTransport
from mssendmail.spool import pause
from mssendmail.spool.layout import DEAD, DEFERRED, QUEUE, Spool
from tests.fakegraph import Fault
from tests.reliability_helpers import (
    SENDER,
    WORKER,
    RecordingFake,
    assert_no_traceback,
    delivered,
    env_for,
    fake_graph,
    graph_config,
    make_spool,
    queue_direct,
    run_worker,
)

RETRY_MIN, RETRY_MAX = 60.0, 600.0


class Clock:
    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingFake]:
    with fake_graph(tmp_path / "fake", monkeypatch) as server:
        yield server
        assert server.max_in_flight <= 4, server.state()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return make_spool(tmp_path / "queue")


class Harness:
    """deliver() against the fake with a fake clock; the worker's due() decides when."""

    def __init__(self, spool: Spool, fake: RecordingFake, **keys: str) -> None:
        self.spool, self.fake, self.clock = spool, fake, Clock()
        values = {**fake.config(), "QUEUE_DIR": spool.root, "SENDER": SENDER, **keys}
        cfg = config.Config(values)
        self.ctx = Context(
            spool=spool,
            cfg=cfg,
            transport=GraphTransport.from_config(cfg),
            policy=Policy(RETRY_MIN, RETRY_MAX, max_age=30 * 86400, max_attempts=None),
            now=self.clock,
            rng=random.Random(7),
        )
        self.worker = Worker(self.ctx, 4, once=True)

    def close(self) -> None:
        self.ctx.transport.close()
        self.worker.pool.shutdown()

    def queue(self, *markers: str) -> list[str]:
        ids = queue_direct(self.spool, markers)
        assert sorted(pickup(self.spool, 1 << 20)) == sorted(ids)
        return ids

    def due(self) -> list[str]:
        return [qid for qid, _ in self.worker.due(self.clock())]

    def run_until_done(self, qid: str, limit: int = 12) -> tuple[list[float], Outcome]:
        """Attempt qid whenever it is due; returns (clock time of each attempt, final outcome)."""
        times: list[float] = []
        area = QUEUE
        for _ in range(limit):
            assert qid in self.due()
            times.append(self.clock())
            before = len(self.fake.statuses())
            result = deliver(self.ctx, qid, area)
            assert len(self.fake.statuses()) == before + 1, "one attempt, one request"
            if result is not Outcome.DEFERRED:
                return times, result
            area = DEFERRED
            when = os.stat(self.spool.path(DEFERRED, qid)).st_mtime
            self.clock.t = when - 1
            assert qid not in self.due(), "due before its time"
            self.clock.t = when
        raise AssertionError(f"{qid} still deferred after {limit} attempts")


@pytest.fixture
def harness(spool: Spool, fake: RecordingFake) -> Iterator[Harness]:
    h = Harness(spool, fake, GRAPH_TIMEOUT="2s")
    yield h
    h.close()


def nominal(attempt: int) -> float:
    return min(RETRY_MAX, RETRY_MIN * 2 ** (attempt - 1))


def assert_backoff(times: list[float]) -> None:
    for n, (a, b) in enumerate(zip(times, times[1:]), start=1):
        gap = b - a
        assert JITTER_LOW * nominal(n) - 1e-6 <= gap <= nominal(n) + 1e-6, (n, gap, times)


TRANSIENT = {
    "500": Fault.error(500),
    "502": Fault.error(502),
    "503": Fault.error(503),
    "504": Fault.error(504),
    "429-no-retry-after": Fault.error(429),
    "reset": Fault.reset(),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_failures_back_off_exponentially_and_then_deliver_once(
    harness: Harness, fake: RecordingFake, name: str
) -> None:
    fake.script(*[TRANSIENT[name]] * 6)
    [qid] = harness.queue(f"fault-{name}")
    times, result = harness.run_until_done(qid)
    assert result is Outcome.SENT
    assert len(times) == 7
    assert_backoff(times)  # 60, 120, 240, 480, 600, 600 s, each 80-100 %
    expected = 0 if name == "reset" else int(name[:3])
    assert fake.statuses() == [expected] * 6 + [202]
    assert delivered(fake) == {f"fault-{name}": 1}
    assert os.path.exists(harness.spool.sent_path(qid))


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_and_pauses_the_mailbox(
    harness: Harness, fake: RecordingFake, status: int
) -> None:
    fake.script(Fault.error(status, retry_after="900"))
    first, second = harness.queue("ra-1", "ra-2")
    start = harness.clock()
    assert deliver(harness.ctx, first, QUEUE) is Outcome.DEFERRED
    when = os.stat(harness.spool.path(DEFERRED, first)).st_mtime
    assert when - start == pytest.approx(900)  # Retry-After beats the 48-60 s backoff
    harness.clock.t += 10
    requests = len(fake.statuses())
    # Same mailbox, during the pause: deferred to its end without asking Graph.
    assert deliver(harness.ctx, second, QUEUE) is Outcome.DEFERRED
    assert len(fake.statuses()) == requests
    assert os.stat(harness.spool.path(DEFERRED, second)).st_mtime == pytest.approx(start + 900)
    harness.clock.t = start + 900
    assert sorted(harness.due()) == sorted([first, second])
    for qid in (first, second):
        assert deliver(harness.ctx, qid, DEFERRED) is Outcome.SENT
    assert delivered(fake) == {"ra-1": 1, "ra-2": 1}


def test_hang_longer_than_graph_timeout_is_cut_and_retried(
    harness: Harness, fake: RecordingFake
) -> None:
    fake.script(Fault.hang(30))
    [qid] = harness.queue("hang")
    started = time.monotonic()
    assert deliver(harness.ctx, qid, QUEUE) is Outcome.DEFERRED
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6, elapsed  # GRAPH_TIMEOUT=2s, not the 30 s hang
    harness.clock.t = os.stat(harness.spool.path(DEFERRED, qid)).st_mtime
    assert deliver(harness.ctx, qid, DEFERRED) is Outcome.SENT
    assert fake.statuses() == [0, 202]
    assert delivered(fake) == {"hang": 1}


def test_expired_token_gets_one_refresh_and_the_message_goes_once(
    harness: Harness, fake: RecordingFake
) -> None:
    first, second = harness.queue("tok-1", "tok-2")
    assert deliver(harness.ctx, first, QUEUE) is Outcome.SENT
    tokens = len(fake.token_requests)
    fake.revoke_tokens()  # the cached token is now refused with 401
    assert deliver(harness.ctx, second, QUEUE) is Outcome.SENT
    assert fake.statuses() == [202, 401, 202]
    assert len(fake.token_requests) == tokens + 1
    assert delivered(fake) == {"tok-1": 1, "tok-2": 1}


def test_invalid_client_pauses_the_queue_in_process(harness: Harness, fake: RecordingFake) -> None:
    fake.script_token(Fault.error(401, code="invalid_client"))
    [qid] = harness.queue("paused")
    assert deliver(harness.ctx, qid, QUEUE) is Outcome.PAUSED
    assert harness.spool.ids(QUEUE) == [qid] and harness.spool.ids(DEAD) == []
    until = pause.queue_paused_until(harness.spool)
    assert until >= harness.clock() + RETRY_MIN * JITTER_LOW
    assert "invalid_client" in str(pause.current(harness.spool).get("reason"))
    assert fake.statuses() == []  # no sendMail without a token


PERMANENT = [
    (400, "ErrorInvalidRecipients"),
    (400, "ErrorMimeContentInvalidBase64String"),
    (400, "ErrorMessageSizeExceeded"),
    (403, "ErrorSendAsDenied"),
    (413, "RequestEntityTooLarge"),
    (404, "ErrorInvalidUser"),
    (400, "BadRequest"),
]


@pytest.mark.parametrize(("status", "code"), PERMANENT)
def test_permanent_errors_dead_letter_at_once_with_the_reason(
    harness: Harness, fake: RecordingFake, status: int, code: str
) -> None:
    fake.script(Fault.error(status, code=code))
    [qid] = harness.queue(f"perm-{code}")
    assert deliver(harness.ctx, qid, QUEUE) is Outcome.DEAD
    assert fake.statuses() == [status]  # one request, no retry
    assert harness.spool.ids(DEAD) == [qid] and harness.due() == []
    reason = json.loads(Path(harness.spool.reason_path(DEAD, qid)).read_text())
    assert reason["status"] == status and reason["code"] == code
    assert reason["class"] == "permanent" and reason["why"] == "permanent failure"
    assert reason["attempts"] == 1
    assert code in reason["message"] and reason["request_id"]
    assert delivered(fake) == {}


# ---- the real worker, recorded request times ---------------------------------------


def test_invalid_client_pauses_the_worker_exit_75_and_dead_letters_nothing(
    tmp_path: Path, spool: Spool, fake: RecordingFake
) -> None:
    cfg = graph_config(
        tmp_path / "w.env",
        Path(spool.root),
        fake,
        CLIENT_SECRET="wrong-secret-1",
        RETRY_MIN="60s",  # the pause lasts 48-60 s: the second run falls inside it
    )
    ids = queue_direct(spool, ["p-1", "p-2", "p-3"])
    result = run_worker(cfg, fake)
    assert result.returncode == 75, result.stderr
    assert_no_traceback(result.stderr)
    assert "invalid_client" in result.stderr and "wrong-secret-1" not in result.stderr
    paused = json.loads((Path(spool.root) / "state" / "pause.json").read_text())
    assert paused["until"] > time.time() and "invalid_client" in paused["reason"]
    assert sorted(spool.ids(QUEUE)) == sorted(ids) and spool.ids(DEAD) == []
    asked = len(fake.token_requests)
    again = run_worker(cfg, fake)  # while paused: no token request, still 75
    assert again.returncode == 75 and len(fake.token_requests) == asked
    assert delivered(fake) == {}


@pytest.mark.parametrize("concurrency", ["", "8"])
def test_never_more_than_4_requests_in_flight(
    tmp_path: Path, spool: Spool, fake: RecordingFake, concurrency: str
) -> None:
    keys = {"CONCURRENCY": concurrency} if concurrency else {}
    cfg = graph_config(tmp_path / "w.env", Path(spool.root), fake, **keys)
    fake.latency = 0.1
    markers = [f"c-{i}" for i in range(40)]
    queue_direct(spool, markers)
    result = run_worker(cfg, fake)
    assert result.returncode == 0, result.stderr
    assert delivered(fake) == dict.fromkeys(markers, 1)
    # Exactly 4: the limit was reached (so the check can see an excess) and held.
    assert fake.max_in_flight == 4, fake.state()


def test_service_worker_retry_schedule_from_recorded_request_times(
    tmp_path: Path, spool: Spool, fake: RecordingFake
) -> None:
    cfg = graph_config(tmp_path / "w.env", Path(spool.root), fake, RETRY_MIN="1s", RETRY_MAX="2s")
    fake.script(Fault.error(503), Fault.error(500), Fault.error(429, retry_after="3"))
    queue_direct(spool, ["sched"])
    proc = subprocess.Popen([WORKER], stderr=subprocess.PIPE, text=True, env=env_for(cfg, fake))
    try:
        fake.wait_for_messages(1, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert_no_traceback(err)
    sends = [r for r in fake.requests if r.path.endswith("/sendMail")]
    assert [r.status for r in sends] == [503, 500, 429, 202]
    gaps = [b.time - a.time for a, b in zip(sends, sends[1:])]
    # 1 s and 2 s nominal (80-100 %), then Retry-After 3 s; the service rescans
    # every second, so a retry may come up to ~1 s late but never early.
    assert 0.8 - 0.05 <= gaps[0] <= 2.3, gaps
    assert 1.6 - 0.05 <= gaps[1] <= 3.3, gaps
    assert 3.0 - 0.05 <= gaps[2] <= 4.5, gaps
    assert delivered(fake) == {"sched": 1}
