"""Drain benchmark for ``mssendmail-worker`` against the local fake Graph (issue 3).

    .venv/bin/python bench/drain.py [--count 10000] [--latency 0.0] [--scale 0]

Fills a fresh spool with --count 4 KB messages through the real submission
writer, starts the strict HTTPS fake (``python -m tests.fakegraph``) with
--latency seconds per sendMail, runs ``mssendmail-worker --once`` with the
default CONCURRENCY=4 and real msal, and reports messages/s and the
worker's peak RSS (VmHWM, sampled from /proc while it runs). Every message
must arrive exactly once (checked from the fake's messages.jsonl).

Goals: latency 0.2 -> >= 18 msg/s; latency 0 -> >= 200 msg/s; RSS < 80 MB.
--scale N additionally drains N messages and reports time(N)/time(count);
goal for N = 10 x count: <= 11.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mssendmail.spool.layout import Spool, init_tree  # noqa: E402
from mssendmail.submission.writer import Submission, make_envelope  # noqa: E402
from tests.fakegraph import spawn  # noqa: E402

BIN = Path(sys.executable).parent
BODY = (b"x" * 76 + b"\n") * 52  # ~4 KB with headers


def fill(spool: Spool, count: int) -> None:
    for i in range(count):
        with Submission(spool, 1 << 20) as sub:
            sub.write(f"To: rcpt{i % 50}@example.org\nSubject: bench {i}\n\n".encode() + BODY)
            sub.commit(make_envelope("", [f"rcpt{i % 50}@example.org"]))


def start_fake(work: Path, latency: float) -> tuple[subprocess.Popen[str], dict[str, str]]:
    return spawn(work, "--latency", str(latency))


def peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def drain(count: int, latency: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="mss-drain-"))
    try:
        init_tree(str(work / "queue"))
        t0 = time.monotonic()
        fill(Spool(str(work / "queue")), count)
        fill_s = time.monotonic() - t0
        # Start from a clean page cache: the fill's own writeback would
        # otherwise land in the middle of the drain's fsyncs.
        os.sync()
        fake, info = start_fake(work, latency)
        try:
            cfg = work / "bench.env"
            cfg.write_text(
                f"TENANT_ID={info['tenant']}\nCLIENT_ID={info['client_id']}\n"
                f"CLIENT_SECRET={info['secret']}\nAUTHORITY_HOST={info['url']}\n"
                f"GRAPH_URL={info['url']}\nQUEUE_DIR={work / 'queue'}\n"
                "SENDER=relay@contoso.example\n"
            )
            env = {**os.environ, "REQUESTS_CA_BUNDLE": info["ca"], "CURL_CA_BUNDLE": info["ca"]}
            start = time.monotonic()
            worker = subprocess.Popen(
                [str(BIN / "mssendmail-worker"), "--once", "--config", str(cfg)],
                stderr=subprocess.DEVNULL,
                env=env,
            )
            peak = 0
            while worker.poll() is None:
                peak = max(peak, peak_rss_kb(worker.pid))
                time.sleep(0.2)
            elapsed = time.monotonic() - start
            assert worker.returncode == 0, f"worker exited {worker.returncode}"
        finally:
            fake.terminate()
            fake.wait()
        lines = (work / "fake-out" / "messages.jsonl").read_text().splitlines()
        subjects = [json.loads(line)["subject"] for line in lines]
        assert len(subjects) == count, f"fake got {len(subjects)} of {count}"
        assert len(set(subjects)) == count, "a message arrived twice"
        return {
            "count": count,
            "latency": latency,
            "fill_s": fill_s,
            "seconds": elapsed,
            "msg_per_s": count / elapsed,
            "peak_rss_mb": peak / 1024,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--scale", type=int, default=0)
    args = parser.parse_args()
    result = drain(args.count, args.latency)
    print(json.dumps(result))
    ok = result["peak_rss_mb"] < 80
    goal = 18 if args.latency >= 0.2 else 200 if args.latency == 0 else 0
    ok = ok and result["msg_per_s"] >= goal
    if args.scale:
        big = drain(args.scale, args.latency)
        ratio = big["seconds"] / result["seconds"]
        print(json.dumps({**big, "ratio_to_base": ratio}))
        ok = ok and ratio <= 11 * args.scale / (10 * args.count) and big["peak_rss_mb"] < 80
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
