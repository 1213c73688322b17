"""Cost of the MIME repairs in prepare() (issue 16), as ratios to prepare() without them.

    .venv/bin/python bench/mime.py [--mb 20]

Each case runs prepare() on the same message twice in this process: once as
shipped, once with mssendmail.delivery.mime.normalise swapped for a no-op
(the baseline), best of 5. Cases: a 4 KB message and an --mb MB message that
are already well-formed (the scan alone, nothing rewritten), and an --mb MB
cron-style message (raw UTF-8, no MIME headers, 5,000-octet lines) that is
re-encoded as quoted-printable.

Goals: well-formed 4 KB <= 2.5x (the baseline is ~60 us, so that is tens of
microseconds a message against a Graph request of 100 ms or more); well-formed
--mb MB <= 1.5x; the repair of --mb MB runs at >= 10 MB/s (it is linear; see
tests/test_mime.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mssendmail.config import Config  # noqa: E402
from mssendmail.delivery import prepare as prep  # noqa: E402
from mssendmail.delivery.mime import Normalised  # noqa: E402

CFG = Config({"SENDER": "relay@example.com"})
ENV = {"recipients": ["a@example.org"], "time": 1_700_000_000.0}
HEAD = b"From: app@example.org\r\nTo: a@example.org\r\nSubject: bench\r\n"
GOOD = HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
GOOD += b"Content-Transfer-Encoding: 8bit\r\n\r\n"


def best(fn: Callable[[], object], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def ratio(message: bytes) -> tuple[float, float]:
    real = prep.normalise
    with_repairs = best(lambda: prep.prepare(message, ENV, CFG, "q1"))
    prep.normalise = lambda mime, charset: Normalised(mime)  # type: ignore[assignment]
    try:
        baseline = best(lambda: prep.prepare(message, ENV, CFG, "q1"))
    finally:
        prep.normalise = real
    return with_repairs, baseline


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=20)
    args = parser.parse_args()
    short = ("Grüße Привет 你好 ".encode() * 4)[:76] + b"\r\n"
    size = args.mb * 1_000_000
    cases = [
        ("well-formed 4 KB", GOOD + short * 50, 2.5),
        (f"well-formed {args.mb} MB", GOOD + short * (size // len(short)), 1.5),
    ]
    failed = False
    for name, message, goal in cases:
        t, base = ratio(message)
        ok = t / base <= goal
        failed |= not ok
        print(
            f"{name}: {t * 1000:.2f} ms vs {base * 1000:.2f} ms without repairs: "
            f"{t / base:.2f}x (goal <= {goal}x) {'ok' if ok else 'MISSED'}"
        )
    long_line = ("Grüße Привет 你好 " * 250).encode()[:5000] + b"\n"
    cron = b"From: root\nTo: a@example.org\nSubject: cron\n\n" + long_line * (size // 5001)
    t, base = ratio(cron)
    rate = len(cron) / t / 1e6
    ok = rate >= 10
    failed |= not ok
    print(
        f"cron {args.mb} MB repaired (qp): {t * 1000:.0f} ms vs {base * 1000:.0f} ms without: "
        f"{t / base:.1f}x, {rate:.0f} MB/s (goal >= 10 MB/s) {'ok' if ok else 'MISSED'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
