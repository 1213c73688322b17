"""Crash suite: kill -9 submitters and workers at random moments; nothing is lost.

Part A kills ``mssendmail`` while it streams a message (stdin fed slowly, so
the kill lands before start-up, mid-stream, during the commit or after the
exit). Part B kills ``mssendmail-worker --once`` while it picks up and
delivers to the fake Graph, which records every 202 with the message's
marker. After a final worker run to completion:

* every submission that exited 0, or whose record reached its final name in
  maildrop/ before the kill, was delivered;
* nothing else (killed before the commit, non-zero exit) was ever delivered,
  and no record of ours was ever torn (corrupt/ stays empty);
* a message is delivered twice only if a worker was killed while it was in
  active/ without a sent record (Graph's 202 came, the state update did
  not), and at most once more per such kill;
* no temp file is left in the spool, and nothing stays in active/.

Empty temp files (a submitter killed between open() and its first write)
are kept by pickup for EMPTY_TEMP_GRACE (60 s) because a live submitter may
not hold its flock yet; the suite ages those files by two minutes before
the final run instead of waiting. Non-empty temp files get no such help.

test_crash_points_* put the kill exactly into the two windows around the
sent record, which random kills hit only rarely.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mssendmail.delivery import outcome
from mssendmail.spool import record
from mssendmail.spool.layout import ACTIVE, MAILDROP, SENT, Spool
from tests.reliability_helpers import (
    MSSENDMAIL,
    RCPT,
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
    temp_leftovers,
)

SUBMIT_KILLS = 150
WORKER_KILLS = 60
MARKER_RE = re.compile(rb"Subject: (crash[AB]-\d+)")
WORKER_TEMP_RE = re.compile(
    r"\A(queue|meta|sent|state)/tmp\.[0-9a-f]{18}(\.json)?\.\d+\.[0-9a-f]{8}\Z"
)


def marker_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(200)
    except OSError:
        return None
    found = MARKER_RE.search(head)
    return found.group(1).decode() if found else None


def final_records(spool: Spool) -> dict[str, str]:
    """marker -> maildrop name of every record that reached its final name."""
    out = {}
    for name in os.listdir(spool.dir(MAILDROP)):
        if name.startswith("tmp."):
            continue
        path = Path(spool.path(MAILDROP, name))
        with open(path, "rb") as fh:
            record.verify(fh)  # a final name must only ever hold a whole record
        marker = marker_of(path)
        assert marker is not None, name
        out[marker] = name
    return out


def age_empty_temps(spool: Spool) -> list[str]:
    aged = []
    old = time.time() - 120
    for name in os.listdir(spool.dir(MAILDROP)):
        path = spool.path(MAILDROP, name)
        if name.startswith("tmp.") and os.path.getsize(path) == 0:
            os.utime(path, (old, old))
            aged.append(name)
    return aged


def submit_and_kill(cfg: Path, marker: str, rng: random.Random) -> int:
    """Start mssendmail, feed it slowly, SIGKILL it at a random moment; its exit status."""
    body = (f"{marker} ".encode() * rng.randint(1, 40) + b"\n") * rng.randint(1, 400)
    data = f"To: {RCPT}\nSubject: {marker}\n\n".encode() + body
    proc = subprocess.Popen(
        [MSSENDMAIL, "-i", RCPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env_for(cfg),
    )
    assert proc.stdin is not None and proc.stderr is not None
    stdin = proc.stdin

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                n = rng.randint(1, 64 * 1024)
                stdin.write(view[:n])
                stdin.flush()
                view = view[n:]
                time.sleep(rng.uniform(0, 0.01))
            stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(rng.uniform(0.0, 0.2))
    proc.kill()  # a no-op on a process that has exited; wait() then tells its real status
    feeder.join()
    err = proc.stderr.read().decode(errors="replace")
    rc = proc.wait(timeout=30)
    assert_no_traceback(err)
    return rc


@pytest.mark.slow
def test_killing_submitters_loses_nothing_and_sends_nothing_uncommitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    with fake_graph(tmp_path / "fake", monkeypatch) as fake:
        cfg = graph_config(tmp_path / "crash.env", tmp_path / "queue", fake)
        rng = random.Random(os.environ.get("CRASH_SEED", "crash-a"))
        seeds = [rng.random() for _ in range(SUBMIT_KILLS)]
        markers = [f"crashA-{i}" for i in range(SUBMIT_KILLS)]
        with ThreadPoolExecutor(4) as pool:
            codes = list(
                pool.map(
                    lambda i: submit_and_kill(cfg, markers[i], random.Random(seeds[i])),
                    range(SUBMIT_KILLS),
                )
            )
        assert len(codes) == len(markers)
        status = dict(zip(markers, codes))
        committed = final_records(spool)
        aged = age_empty_temps(spool)
        result = run_worker(cfg, fake)
        assert result.returncode == 0, result.stderr
        assert_no_traceback(result.stderr)
        got = delivered(fake)

    kinds = collections.Counter(
        "exit0" if rc == 0 else "killed" if rc == -signal.SIGKILL else f"exit{rc}" for rc in codes
    )
    print(f"submitters: {dict(kinds)}; committed {len(committed)}; empty temps aged {len(aged)}")
    # The random moments must really cover both sides of the commit.
    assert kinds["exit0"] >= 10 and kinds["killed"] >= 10, kinds
    for marker, rc in status.items():
        if rc == 0:
            assert marker in committed, f"{marker} exited 0 but its record is not in maildrop/"
        if rc == 0 or marker in committed:
            assert got[marker] == 1, f"{marker} (exit {rc}) delivered {got[marker]} times"
        else:
            assert got[marker] == 0, f"{marker} (exit {rc}, never committed) was delivered"
    assert set(got) <= set(markers)
    areas = message_areas(spool_root := Path(spool.root))
    assert areas == {a: [] for a in areas}, areas  # corrupt/ empty: no torn record, ever
    assert temp_leftovers(spool_root) == []


def start_worker(cfg: Path, fake: RecordingFake, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [WORKER, "--once"], stdout=subprocess.DEVNULL, stderr=err, env=env_for(cfg, fake)
        )


def snapshot_active(spool: Spool) -> list[tuple[str, bool]]:
    """(marker, has a sent record) for every message in active/ right after a kill."""
    out = []
    for name in spool.ids(ACTIVE):
        marker = marker_of(Path(spool.path(ACTIVE, name)))
        if marker is not None:
            out.append((marker, os.path.exists(spool.sent_path(name))))
    return out


def check_duplicates(
    got: collections.Counter[str], windows: collections.Counter[str], markers: list[str]
) -> None:
    for marker in markers:
        assert got[marker] >= 1, f"{marker} was committed but never delivered"
        extra = got[marker] - 1
        assert extra <= windows[marker], (
            f"{marker} delivered {got[marker]} times but a worker died in the "
            f"202-before-sent-record window only {windows[marker]} times"
        )


@pytest.mark.slow
def test_killing_workers_loses_nothing_and_resends_only_in_the_202_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    logs = tmp_path / "log"
    logs.mkdir()
    rng = random.Random(os.environ.get("CRASH_SEED", "crash-b"))
    markers: list[str] = []

    def more(n: int) -> None:
        new = [f"crashB-{len(markers) + i}" for i in range(n)]
        queue_direct(spool, new)
        markers.extend(new)

    windows: collections.Counter[str] = collections.Counter()
    after_sent_record = 0
    with fake_graph(tmp_path / "fake", monkeypatch, latency=0.03) as fake:
        cfg = graph_config(tmp_path / "crash.env", Path(spool.root), fake, log_dir=logs)
        more(100)
        for i in range(WORKER_KILLS):
            more(20)
            proc = start_worker(cfg, fake, logs / f"worker-{i}.stderr.log")
            time.sleep(rng.uniform(0.05, 0.9))
            proc.kill()
            proc.wait(timeout=30)
            for marker, has_sent in snapshot_active(spool):
                if has_sent:
                    after_sent_record += 1
                else:
                    windows[marker] += 1
        for _ in range(3):
            result = run_worker(cfg, fake)
            assert result.returncode == 0, result.stderr
            assert_no_traceback(result.stderr)
            if not any(message_areas(Path(spool.root)).values()):
                break
        got = delivered(fake)

    duplicates = sum(n - 1 for n in got.values() if n > 1)
    print(
        f"{len(markers)} messages, {WORKER_KILLS} worker kills, {duplicates} duplicates, "
        f"{sum(windows.values())} in-flight at a kill, {after_sent_record} after the sent record"
    )
    assert sum(windows.values()) >= 5, "the kills never landed during a delivery"
    check_duplicates(got, windows, markers)
    assert set(got) <= set(markers)
    for log in logs.glob("worker-*.stderr.log"):
        assert_no_traceback(log.read_text(errors="replace"))
    root = Path(spool.root)
    leftovers = temp_leftovers(root)
    # The worker's housekeeping removes what killed workers left half-written
    # (pickup copies, write_atomic temps): nothing may remain.
    assert leftovers == [], leftovers
    areas = message_areas(root)
    assert areas == {a: [] for a in areas}, areas
    assert os.listdir(root / "meta") == []


# ---- the kill put exactly into the windows around the sent record ----------------------

HARNESS = """
import os, signal, sys
import mssendmail.delivery.outcome as outcome
import mssendmail.spool.sentrecord as sentrecord
point, victim = sys.argv[1], sys.argv[2]
real_sent, real_rewrite = outcome.sent, sentrecord.rewrite_parked

def sent(spool, held, info):
    if held.queue_id == victim and point == "after-202":
        os.kill(os.getpid(), signal.SIGKILL)  # Graph said 202; nothing recorded yet
    return real_sent(spool, held, info)

def rewrite(spool, queue_id, record):
    if queue_id == victim and point == "in-sent-record":
        os.kill(os.getpid(), signal.SIGKILL)  # moved to sent/, record not yet written
    real_rewrite(spool, queue_id, record)
    if queue_id == victim and point == "after-sent-record":
        os.kill(os.getpid(), signal.SIGKILL)  # recorded; meta and claim not yet cleaned

outcome.sent, sentrecord.rewrite_parked = sent, rewrite
import mssendmail.delivery.worker as worker_mod
# One thread, one message in flight: only the victim can be in the 202 window
# (extra preparing threads could put a second message there at the kill).
worker_mod.PREPARE_AHEAD = 0
from mssendmail.delivery.worker import main
sys.argv = ["mssendmail-worker", "--once"]
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("point", "expected"), [("after-202", 2), ("in-sent-record", 1), ("after-sent-record", 1)]
)
def test_crash_points_around_the_sent_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, expected: int
) -> None:
    spool = make_spool(tmp_path / "queue")
    with fake_graph(tmp_path / "fake", monkeypatch) as fake:
        cfg = graph_config(tmp_path / "crash.env", Path(spool.root), fake, CONCURRENCY="1")
        ids = queue_direct(spool, ["crashB-0", "crashB-1", "crashB-2"])
        victim = ids[1]
        killed = subprocess.run(
            [sys.executable, "-c", HARNESS, point, victim],
            capture_output=True,
            text=True,
            env=env_for(cfg, fake),
            timeout=60,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        if point == "after-202":
            assert os.listdir(spool.dir(ACTIVE)) == [victim]
            assert not outcome.already_sent(spool, victim)
        else:
            assert os.listdir(spool.dir(ACTIVE)) == []
            assert os.path.exists(spool.sent_path(victim)) == (point == "after-sent-record")
            assert os.path.lexists(spool.path(SENT, victim)) == (point == "in-sent-record")
        result = run_worker(cfg, fake)
        assert result.returncode == 0, result.stderr
        assert_no_traceback(killed.stderr, result.stderr)
        got = delivered(fake)
    assert got == {"crashB-0": 1, "crashB-1": expected, "crashB-2": 1}
    areas = message_areas(Path(spool.root))
    assert areas == {a: [] for a in areas}
    # The worker's housekeeping turns a half-made record into a whole one.
    assert sorted(os.listdir(spool.dir(SENT))) == sorted(f"{i}.json" for i in ids)
    record = json.loads(Path(spool.sent_path(victim)).read_text())
    assert record["id"] == victim


KILL_IN_FSYNC = """
import os, signal, sys
real_fsync = os.fsync
where = sys.argv[1]

def fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if f"/{where}/tmp." in path:
        os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written, not yet renamed
    return real_fsync(fd)

real_rename = os.rename


def rename(src, dst, *args, **kwargs):
    if f"/{where}/tmp." in str(src):
        os.kill(os.getpid(), signal.SIGKILL)  # a temp file that is not fsynced: kill at the rename
    return real_rename(src, dst, *args, **kwargs)

os.fsync = fsync
os.rename = rename
from mssendmail.delivery.worker import main
sys.argv = ["mssendmail-worker", "--once"]
sys.exit(main())
"""


# sent/ has no temp files: a record is the message's own inode (see the
# in-sent-record crash point above).
@pytest.mark.parametrize("where", ["queue"])
def test_temp_files_of_a_killed_worker_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    spool = make_spool(tmp_path / "queue")
    with fake_graph(tmp_path / "fake", monkeypatch) as fake:
        cfg = graph_config(tmp_path / "crash.env", Path(spool.root), fake)
        queue_direct(spool, ["crashB-0"])
        killed = subprocess.run(
            [sys.executable, "-c", KILL_IN_FSYNC, where],
            capture_output=True,
            text=True,
            env=env_for(cfg, fake),
            timeout=60,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert temp_leftovers(Path(spool.root)) != []  # the kill landed where meant
        result = run_worker(cfg, fake)
        assert result.returncode == 0, result.stderr
        assert delivered(fake)["crashB-0"] >= 1
    assert temp_leftovers(Path(spool.root)) == []
