"""Poison benchmark (issue 12): 1,000 messages drain as fast with poison among them.

    .venv/bin/python bench/poison.py [--count 1000] [--rounds 2]

Each round fills two fresh spools with --count 4 KB messages through the real
submission writer; the second also gets one poison message of each kind the
security review found:

* From: with 600 nested comments (getaddresses raised RecursionError);
* a MIME part whose Content-Type holds 600 nested comments (large.plan did);
* envelope time 1e20 submitted to maildrop/ (formatdate raised OverflowError),
  and the same record planted straight in queue/, as a pre-upgrade one;
* a MIME bomb of 60,000 tiny attachments (40 s of planning, 43,873 requests);
* a To: header of 50,000 addresses (one log line each per attempt).

Then ``mssendmail-worker --once`` (TRANSPORT=file) drains each spool, and the
wall time of the clean drain is divided by that of the poisoned one, in the
same process, alternating. Every clean message must be delivered in both
and every poison must end in dead/ or corrupt/. Goal: ratio >= 0.90.
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

from mssendmail.spool import record  # noqa: E402
from mssendmail.spool.layout import CORRUPT, DEAD, QUEUE, Spool, init_tree, new_id  # noqa: E402
from mssendmail.submission.writer import Submission, make_envelope  # noqa: E402

BIN = Path(sys.executable).parent
BODY = (b"x" * 76 + b"\n") * 52
DEEP = b"(" * 600 + b"x" + b")" * 600


def submit(spool: Spool, body: bytes, **envelope: object) -> None:
    with Submission(spool, 1 << 25) as sub:
        sub.write(body)
        sub.commit({**make_envelope("", ["rcpt@example.org"]), **envelope})


def fill(spool: Spool, count: int) -> None:
    for i in range(count):
        submit(spool, f"To: rcpt{i % 50}@example.org\nSubject: bench {i}\n\n".encode() + BODY)


def poisons(spool: Spool) -> int:
    """One of each kind; returns how many."""
    submit(spool, b"From: " + DEEP + b" <a@example.com>\nSubject: p1\n\nx\n")
    submit(
        spool,
        b'Subject: p2\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b"Content-Type: text/plain " + DEEP + b"\n\nx\n--b--\n",
    )
    submit(spool, b"Subject: p3\n\nx\n", time=1e20)
    planted = spool.path(QUEUE, new_id())
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    writer = record.RecordWriter(fd)
    writer.write(b"Subject: p4\n\nx\n")
    writer.finish({**make_envelope("", ["rcpt@example.org"]), "time": 1e20})
    os.close(fd)
    parts = [b'Subject: p5\nContent-Type: multipart/mixed; boundary="b"\n\n']
    for i in range(60_000):
        parts.append(b'--b\nContent-Type: application/octet-stream; name="f%d"\n\nxx\n' % i)
    submit(spool, b"".join(parts) + b"--b--\n")
    rcpts = b", ".join(b"u%d@example.org" % i for i in range(50_000))
    submit(spool, b"To: " + rcpts + b"\nSubject: p6\n\nx\n")
    return 6


def drain(count: int, poisoned: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="mss-poison-"))
    try:
        spool = Spool(str(work / "queue"))
        init_tree(spool.root)
        fill(spool, count)
        bad = poisons(spool) if poisoned else 0
        os.sync()
        outbox = work / "out"
        outbox.mkdir()
        cfg = work / "bench.env"
        cfg.write_text(
            f"QUEUE_DIR={spool.root}\nTRANSPORT=file\nOUTBOX_DIR={outbox}\n"
            "SENDER=relay@contoso.example\n"
        )
        start = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "mssendmail-worker"), "--once", "--config", str(cfg)],
            stderr=subprocess.DEVNULL,
            check=False,
        )
        elapsed = time.monotonic() - start
        assert proc.returncode == 0, f"worker exited {proc.returncode}"
        delivered = len(os.listdir(outbox))
        assert delivered == count, f"{delivered} of {count} delivered"
        dead = len(spool.ids(DEAD))
        corrupt = len([n for n in os.listdir(spool.dir(CORRUPT)) if not n.endswith(".json")])
        assert dead + corrupt == bad, f"{dead} dead + {corrupt} corrupt, {bad} poisons"
        return {"seconds": elapsed, "dead": dead, "corrupt": corrupt}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    clean, dirty = [], []
    for _ in range(args.rounds):
        clean.append(drain(args.count, False)["seconds"])
        result = drain(args.count, True)
        dirty.append(result["seconds"])
    ratio = min(clean) / min(dirty)
    print(
        json.dumps(
            {
                "count": args.count,
                "clean_s": clean,
                "poisoned_s": dirty,
                "dead": result["dead"],
                "corrupt": result["corrupt"],
                "ratio": round(ratio, 3),
            }
        )
    )
    ok = ratio >= 0.90
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
