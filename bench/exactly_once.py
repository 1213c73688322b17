"""Exactly once under Graph's "failed but delivered" answers: duplicates and losses.

One fault plan, three runs against the in-process strict fake Graph
(tests/fakegraph.py), each with the real `mssendmail-worker --once` as a
subprocess, rerun until the spool is empty:

* this tree, the app holding Mail.Send + Mail.ReadBasic.All;
* this tree, Mail.Send only (no Sent Items lookups);
* the code before idempotent retries (git worktree at BASE, default
  d649767), same fake, same plan.

The plan: N messages (default 1,000); for a seeded 10% of them the first
sendMail is accepted and then answered 504, for another 5% accepted and then
reset. Retries are never faulted. "twice" counts extra deliveries (Graph
accepted the same Subject more than once), "lost" the messages never
accepted. The result is appended to bench/RESULTS.md (--no-record: print only).

    .venv/bin/python bench/exactly_once.py [--messages N] [--seed S] [--base REV]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mssendmail.spool.layout import Spool, init_tree  # noqa: E402
from mssendmail.submission.writer import Submission, make_envelope  # noqa: E402
from tests.fakegraph import FakeGraph, Fault  # noqa: E402

SENDER = "relay@contoso.example"
RCPT = "alice@example.org"
AREAS = ("queue", "active", "deferred", "maildrop")


def plan(n: int, seed: str) -> dict[str, Fault]:
    rng = random.Random(seed)
    markers = [f"once-{i}" for i in range(n)]
    picked = rng.sample(markers, int(n * 0.15))
    cut = int(n * 0.10)
    faults = {m: Fault.error(504, accept=True) for m in picked[:cut]}
    faults.update({m: Fault.reset(accept=True) for m in picked[cut:]})
    return faults


def queue(spool: Spool, n: int) -> None:
    for i in range(n):
        with Submission(spool, 1 << 20) as sub:
            sub.write(f"To: {RCPT}\nSubject: once-{i}\n\nbody {i}\n".encode())
            sub.commit(make_envelope("", [RCPT]))


def worker_env(work: Path, fake: FakeGraph, code: Path) -> dict[str, str]:
    cfg = work / "bench.env"
    values = {
        **fake.config(),
        "QUEUE_DIR": str(work / "queue"),
        "SENDER": SENDER,
        "RETRY_MIN": "1s",
        "RETRY_MAX": "2s",
        "GRAPH_TIMEOUT": "5s",
        "SENT_ITEMS_DELAY": "2s",
        "CONCURRENCY": "4",
    }
    cfg.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSENDMAIL")}
    env.update(fake.env())
    env["MSSENDMAIL_CONFIG"] = str(cfg)
    env["PYTHONPATH"] = str(code)
    return env


def waiting(root: Path) -> int:
    return sum(len(os.listdir(root / a)) for a in AREAS)


def run(label: str, code: Path, roles: list[str], n: int, seed: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="exactly-once-"))
    try:
        init_tree(str(work / "queue"))
        spool = Spool(str(work / "queue"))
        with FakeGraph(work / "fake", roles=roles, keep_bodies=False) as fake:
            fake.sent_items_delay = 0.5
            faults = plan(n, seed)
            fake.plan(faults)
            queue(spool, n)
            env = worker_env(work, fake, code)
            started = time.monotonic()
            runs = 0
            while waiting(work / "queue") and runs < 120:
                runs += 1
                subprocess.run(
                    [sys.executable, "-m", "mssendmail.delivery.worker", "--once"],
                    cwd=code,
                    env=env,
                    capture_output=True,
                    timeout=600,
                    check=False,
                )
                if waiting(work / "queue"):
                    time.sleep(1.0)
            seconds = time.monotonic() - started
            got = collections.Counter(str(m.subject) for m in fake.messages)
            lookups = fake.lookups
        twice = sum(c - 1 for c in got.values() if c > 1)
        lost = sum(1 for i in range(n) if got[f"once-{i}"] == 0)
        return {
            "label": label,
            "faults": len(faults),
            "twice": twice,
            "lost": lost,
            "lookups": lookups,
            "runs": runs,
            "seconds": seconds,
            "left": waiting(work / "queue"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def base_tree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="exactly-once-base-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def record(report: str) -> None:
    """Add the report at the end of the "## Exactly once" section of bench/RESULTS.md."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text()
    start = text.find("\n## Exactly once\n")
    if start < 0:
        text += "\n## Exactly once\n"
        start = text.find("\n## Exactly once\n")
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    path.write_text(text[:end].rstrip("\n") + "\n\n" + report + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", default="exactly-once")
    parser.add_argument("--base", default="d649767")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    base = base_tree(args.base)
    try:
        results = [
            run(
                "this tree, Mail.Send + Mail.ReadBasic.All",
                ROOT,
                ["Mail.Send", "Mail.ReadBasic.All"],
                args.messages,
                args.seed,
            ),
            run("this tree, Mail.Send only", ROOT, ["Mail.Send"], args.messages, args.seed),
            run(
                f"before (git {args.base}), Mail.Send",
                base,
                ["Mail.Send"],
                args.messages,
                args.seed,
            ),
        ]
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
        )
    load = os.getloadavg()[0]
    lines = [
        f"`.venv/bin/python bench/exactly_once.py` ({time.strftime('%Y-%m-%d')}, "
        f"{args.messages} messages, seed {args.seed!r}, load average {load:.1f}): "
        f"{results[0]['faults']} first sends accepted then failed (10% 504, 5% reset).",
        "",
        "| run | delivered twice | lost | Sent Items lookups answered | worker runs | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['twice']} | {r['lost']} | {r['lookups']} | {r['runs']} | "
            f"{r['seconds']:.0f} |"
        )
    report = "\n".join(lines)
    print(report)
    if not args.no_record:
        record(report)
    ok = results[0]["twice"] == 0 and all(r["lost"] == 0 and r["left"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
