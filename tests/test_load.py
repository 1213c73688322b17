"""Load: 50 parallel submitters and 2 service-mode workers move 10,000 messages.

Each submitter is its own process that runs the real submission entry
point (``mssendmail.submission.sendmail.main``, the code behind /usr/sbin/sendmail)
200 times, without paying interpreter start-up per message, so the suite
stays within a few minutes on 2 cores; the crash and hostile suites run the
installed ``mssendmail`` program itself. Two ``mssendmail-worker`` services
deliver to the strict fake Graph while the submitters are still running.
Every message must be delivered exactly once, none lost, and neither worker
may log a traceback.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability_helpers import (
    RCPT,
    WORKER,
    assert_no_traceback,
    env_for,
    fake_graph,
    graph_config,
    make_spool,
    message_areas,
    temp_leftovers,
)

SUBMITTERS = int(os.environ.get("LOAD_SUBMITTERS", "50"))
PER_SUBMITTER = int(os.environ.get("LOAD_PER_SUBMITTER", "200"))

SUBMITTER = """
import os, sys, tempfile
from mssendmail.submission.sendmail import main
who, count, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
failures = 0
with tempfile.TemporaryFile() as fh:
    for i in range(count):
        fh.seek(0)
        fh.truncate()
        fh.write(b"To: %s\\nSubject: load-%s-%d\\n\\nbody\\n" % (rcpt, who.encode(), i))
        fh.seek(0)
        if main(["mssendmail", "-i", sys.argv[3]], stdin_fd=fh.fileno()) != 0:
            failures += 1
sys.exit(1 if failures else 0)
"""


@pytest.mark.slow
def test_50_submitters_2_workers_10000_messages_each_delivered_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    logs = tmp_path / "log"
    logs.mkdir()
    total = SUBMITTERS * PER_SUBMITTER
    with fake_graph(tmp_path / "fake", monkeypatch, keep_bodies=False) as fake:
        cfg = graph_config(tmp_path / "load.env", Path(spool.root), fake, log_dir=logs)
        env = env_for(cfg, fake)
        started = time.monotonic()
        workers = []
        for n in range(2):
            with open(logs / f"worker-{n}.stderr.log", "wb") as err:
                workers.append(
                    subprocess.Popen([WORKER], stdout=subprocess.DEVNULL, stderr=err, env=env)
                )
        try:
            submitters = [
                subprocess.Popen(
                    [sys.executable, "-c", SUBMITTER, str(n), str(PER_SUBMITTER), RCPT],
                    stderr=subprocess.PIPE,
                    env=env,
                )
                for n in range(SUBMITTERS)
            ]
            for proc in submitters:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err.decode()
            submitted = time.monotonic() - started
            fake.wait_for_messages(total, timeout=240)
            drained = time.monotonic() - started
            time.sleep(1.5)  # a late duplicate would arrive now
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in workers]
        got = collections.Counter(str(m.subject) for m in fake.messages)
        state = fake.state()

    print(
        f"{total} messages: submitted in {submitted:.1f} s, all delivered after {drained:.1f} s "
        f"({total / drained:.0f} msg/s end to end); fake max in flight {state['max_in_flight']}"
    )
    assert codes == [0, 0]
    # Two worker processes, one mailbox: the per-mailbox limit holds across them.
    assert max(state["max_in_flight_per_mailbox"].values()) <= 4, state
    expected = {f"load-{n}-{i}" for n in range(SUBMITTERS) for i in range(PER_SUBMITTER)}
    assert set(got) == expected, (
        f"missing {len(expected - set(got))}, unexpected {set(got) - expected}"
    )
    dupes = {k: v for k, v in got.items() if v != 1}
    assert dupes == {}, f"delivered more than once: {list(dupes.items())[:10]}"
    assert state["messages"] == total
    for log in logs.iterdir():
        assert_no_traceback(log.read_text(errors="replace"))
    root = Path(spool.root)
    assert not any(message_areas(root).values()), {
        k: len(v) for k, v in message_areas(root).items()
    }
    assert temp_leftovers(root) == []
    assert len(os.listdir(root / "sent")) == total
