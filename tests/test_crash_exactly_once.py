"""kill -9 against idempotent retries: with Mail.ReadBasic.All nothing is lost or sent twice.

The red-team plan of the security review (35 random kills of a worker
draining 2,000 messages, fake latency 40 ms; 68 duplicates before this
change), and kills put exactly between an unknown outcome and the lookup
that settles it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mssendmail.spool.layout import ACTIVE, Spool
from tests.fakegraph import Fault
from tests.reliability_helpers import (
    WORKER,
    RecordingFake,
    assert_no_traceback,
    delivered,
    env_for,
    fake_graph,
    graph_config,
    make_spool,
    message_areas,
    queue_direct,
    run_worker,
)

ROLES = ["Mail.Send", "Mail.ReadBasic.All"]
KILLS = 35
MESSAGES = 2000


def drain_rest(cfg: Path, fake: RecordingFake, spool: Spool, rounds: int = 40) -> None:
    for _ in range(rounds):
        result = run_worker(cfg, fake)
        assert_no_traceback(result.stderr)
        if not any(message_areas(Path(spool.root)).values()):
            return
        time.sleep(1.0)  # deferred mail (RETRY_MAX, SENT_ITEMS_DELAY) comes due


@pytest.mark.slow
def test_red_team_kills_lose_nothing_and_send_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    logs = tmp_path / "log"
    logs.mkdir()
    rng = random.Random(os.environ.get("CRASH_SEED", "red-team"))
    markers = [f"red-{i}" for i in range(MESSAGES)]
    in_flight_at_kill = 0
    with fake_graph(tmp_path / "fake", monkeypatch, latency=0.04, roles=ROLES) as fake:
        fake.sent_items_delay = 0.2
        cfg = graph_config(
            tmp_path / "crash.env", Path(spool.root), fake, log_dir=logs, SENT_ITEMS_DELAY="1s"
        )
        queue_direct(spool, markers)
        for i in range(KILLS):
            with open(logs / f"worker-{i}.stderr.log", "ab") as err:
                proc = subprocess.Popen(
                    [WORKER, "--once"],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=env_for(cfg, fake),
                )
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.wait(timeout=30)
            in_flight_at_kill += len(spool.ids(ACTIVE))
        drain_rest(cfg, fake, spool)
        got = delivered(fake)
    twice = {m: n for m, n in got.items() if n > 1}
    lost = [m for m in markers if got[m] == 0]
    print(
        f"{KILLS} kills, {in_flight_at_kill} claimed at a kill, "
        f"twice {len(twice)}, lost {len(lost)}"
    )
    assert in_flight_at_kill >= 20, "the kills never landed during the drain"
    assert lost == []
    assert twice == {}
    assert set(got) == set(markers)
    for log in logs.glob("worker-*.stderr.log"):
        assert_no_traceback(log.read_text(errors="replace"))
    assert not any(message_areas(Path(spool.root)).values())


HARNESS = """
import os, signal, sys
import mssendmail.delivery.idempotency as idem
point = sys.argv[1]
real_note, real_landed = idem.note_failure, idem._landed

def note(ctx, state, exc, started):
    if point == "before-record" and exc.outcome_unknown:
        os.kill(os.getpid(), signal.SIGKILL)  # Graph took it, answered 504; nothing on disk yet
    return real_note(ctx, state, exc, started)

def landed(*args, **kwargs):
    if point == "at-lookup":
        os.kill(os.getpid(), signal.SIGKILL)  # unknown is on disk; the lookup never happens
    return real_landed(*args, **kwargs)

idem.note_failure, idem._landed = note, landed
import mssendmail.delivery.worker as worker_mod
worker_mod.PREPARE_AHEAD = 0
from mssendmail.delivery.worker import main
sys.argv = ["mssendmail-worker", "--once"]
sys.exit(main())
"""


@pytest.mark.parametrize("point", ["before-record", "at-lookup"])
def test_kill_between_the_unknown_outcome_and_the_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    spool = make_spool(tmp_path / "queue")
    with fake_graph(tmp_path / "fake", monkeypatch, roles=ROLES) as fake:
        cfg = graph_config(
            tmp_path / "crash.env", Path(spool.root), fake, CONCURRENCY="1", SENT_ITEMS_DELAY="1s"
        )
        queue_direct(spool, ["x-0", "x-1", "x-2"])
        fake.plan({"x-1": Fault.error(504, accept=True)})
        if point == "at-lookup":
            first = run_worker(cfg, fake)  # records the unknown outcome and defers
            assert first.returncode == 0, first.stderr
            time.sleep(2.1)  # due again (RETRY_MAX=2s)
        killed = subprocess.run(
            [sys.executable, "-c", HARNESS, point],
            capture_output=True,
            text=True,
            env=env_for(cfg, fake),
            timeout=60,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert_no_traceback(killed.stderr)
        drain_rest(cfg, fake, spool)
        got = delivered(fake)
    assert got == {"x-0": 1, "x-1": 1, "x-2": 1}
    assert not any(message_areas(Path(spool.root)).values())
