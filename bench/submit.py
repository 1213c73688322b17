"""Submission benchmarks for the installed ``mssendmail`` (issue 2).

    .venv/bin/python bench/submit.py [--rounds 200] [--writers 50] [--per-writer 200]
                                     [--big-mb 100] [--only latency|concurrency|memory]
                                     [--python .venv-py3.9/bin/python]

--python runs the benchmark under another venv's interpreter (re-executing
this script with it), so ``mssendmail``, its baseline and the bytecode all
belong to that interpreter: one Python per run, never mixed.

latency      median wall time of ``mssendmail -t -i < 4 KB message`` against
             ``python -I -c pass`` run by the same interpreter binary, the two
             alternating in one loop so machine load hits both alike. Goal:
             ratio of medians <= 2.0.
concurrency  --writers processes each run ``mssendmail`` --per-writer times
             (real subprocesses); then every maildrop file must pass
             record.verify and carry exactly one of the expected markers.
             Goal: exactly writers x per-writer valid records.
memory       a --big-mb message piped into ``mssendmail -i``; peak RSS of the
             mssendmail process from wait4(). Goal: under 40 MB.

Bytecode is compiled first (as a real install does), so the timings do not
include compiling the package's sources. Every run uses a fresh spool in a
temporary directory on the same file system as /tmp, with real fsyncs.
Prints a summary and exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MSSENDMAIL = str(VENV_BIN / "mssendmail")

sys.path.insert(0, str(ROOT))
from mssendmail.spool import record  # noqa: E402
from mssendmail.spool.layout import MAILDROP, init_tree, is_id  # noqa: E402


def message(size: int = 4096, marker: str = "bench") -> bytes:
    head = (
        "From: Alice Example <alice@example.com>\n"
        "To: Bob Example <bob@example.com>, carol@example.com\n"
        f"Subject: benchmark {marker}\n"
        f"X-Marker: {marker}\n\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body = (line * (size // len(line) + 1))[: size - len(head)]
    return head + body


def env_for(spool: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSENDMAIL")}
    env.update(QUEUE_DIR=spool, MSSENDMAIL_CONFIG=os.devnull, **extra)
    return env


def fresh_spool(base: str, name: str) -> str:
    root = os.path.join(base, name)
    init_tree(root)
    return root


def maildrop_ids(spool: str) -> list[str]:
    return [n for n in os.listdir(os.path.join(spool, MAILDROP)) if is_id(n)]


def compile_bytecode() -> None:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "mssendmail")], check=True, env=env
    )


def timed(cmd: list[str], stdin_path: str, env: dict[str, str]) -> float:
    with open(stdin_path, "rb") as stdin:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdin=stdin, env=env, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()}")
    return elapsed


def bench_latency(base: str, rounds: int) -> tuple[bool, list[str]]:
    spool = fresh_spool(base, "latency")
    path = os.path.join(base, "m4k.eml")
    Path(path).write_bytes(message(4096))
    env = env_for(spool)
    base_cmd = [sys.executable, "-I", "-c", "pass"]
    cmd = [MSSENDMAIL, "-t", "-i"]
    for _ in range(5):  # warm the page cache for both
        timed(base_cmd, path, env)
        timed(cmd, path, env)
    base_t: list[float] = []
    ours: list[float] = []
    for _ in range(rounds):
        base_t.append(timed(base_cmd, path, env))
        ours.append(timed(cmd, path, env))
    queued = len(maildrop_ids(spool))
    med_base, med_ours = statistics.median(base_t), statistics.median(ours)
    ratio = med_ours / med_base
    ok = ratio <= 2.0 and queued == rounds + 5

    def q(values: list[float]) -> str:
        cuts = statistics.quantiles(values, n=10)
        return (
            f"median {statistics.median(values) * 1000:.1f} ms "
            f"(p10 {cuts[0] * 1000:.1f}, p90 {cuts[-1] * 1000:.1f}, min {min(values) * 1000:.1f})"
        )

    lines = [
        f"latency: {rounds} alternating runs, 4096-byte message, spool on {spool}",
        f"  baseline  {' '.join(base_cmd)}: {q(base_t)}",
        f"  mssendmail -t -i < 4 KB:  {q(ours)}",
        f"  ratio of medians {ratio:.2f} (goal <= 2.00), {queued} messages queued"
        f" -> {'PASS' if ok else 'FAIL'}",
    ]
    return ok, lines


def _writer(spool: str, writer: int, count: int) -> list[str]:
    env = env_for(spool)
    failures = []
    for seq in range(count):
        marker = f"w{writer:03d}-m{seq:04d}"
        proc = subprocess.run(
            [MSSENDMAIL, "-i", f"rcpt{writer}@example.com"],
            input=message(1024, marker),
            env=env,
            stderr=subprocess.PIPE,
        )
        if proc.returncode != 0:
            failures.append(f"{marker}: exit {proc.returncode} {proc.stderr.decode().strip()}")
    return failures


def bench_concurrency(base: str, writers: int, per_writer: int) -> tuple[bool, list[str]]:
    spool = fresh_spool(base, "concurrency")
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=writers) as pool:
        futures = [pool.submit(_writer, spool, w, per_writer) for w in range(writers)]
        failures = [f for fut in futures for f in fut.result()]
    elapsed = time.perf_counter() - start
    expected = {f"w{w:03d}-m{s:04d}" for w in range(writers) for s in range(per_writer)}
    seen: set[str] = set()
    bad = 0
    ids = maildrop_ids(spool)
    for queue_id in ids:
        try:
            with open(os.path.join(spool, MAILDROP, queue_id), "rb") as fh:
                envelope, size = record.verify(fh)
                body = record.read_message(fh, size)
        except (OSError, record.CorruptRecord):
            bad += 1
            continue
        marker = body.split(b"X-Marker: ", 1)[1].split(b"\n", 1)[0].decode()
        writer = int(marker[1:4])
        if marker in seen or envelope["recipients"] != [f"rcpt{writer}@example.com"]:
            bad += 1
        seen.add(marker)
    leftovers = [n for n in os.listdir(os.path.join(spool, MAILDROP)) if not is_id(n)]
    total = writers * per_writer
    ok = not failures and bad == 0 and seen == expected and len(ids) == total and not leftovers
    lines = [
        f"concurrency: {writers} writers x {per_writer} messages = {total} submissions"
        f" in {elapsed:.1f} s ({total / elapsed:.0f}/s)",
        f"  {len(ids)} records, {bad} invalid, {len(expected - seen)} missing, "
        f"{len(failures)} failed submissions, {len(leftovers)} temp files left"
        f" -> {'PASS' if ok else 'FAIL'}",
        *[f"  {f}" for f in failures[:5]],
    ]
    return ok, lines


def bench_memory(base: str, size_mb: int) -> tuple[bool, list[str]]:
    spool = fresh_spool(base, "memory")
    size = size_mb * 1000 * 1000
    env = env_for(spool, MAX_MESSAGE_SIZE=str(size + 1024 * 1024))
    proc = subprocess.Popen([MSSENDMAIL, "-i", "big@example.com"], stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    start = time.perf_counter()
    head = message(4096)
    proc.stdin.write(head)
    block = (b"0123456789abcdef" * 4 + b"\n") * 1024  # 65 KiB of 65-byte lines
    sent = len(head)
    while sent < size:
        chunk = block[: size - sent]
        proc.stdin.write(chunk)
        sent += len(chunk)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    rss_mb = usage.ru_maxrss / 1024
    ids = maildrop_ids(spool)
    stored = 0
    if ids:
        with open(os.path.join(spool, MAILDROP, ids[0]), "rb") as fh:
            _, stored = record.verify(fh)
    ok = proc.returncode == 0 and rss_mb < 40 and stored == size
    lines = [
        f"memory: {size_mb} MB message piped to mssendmail -i: exit {proc.returncode},"
        f" {elapsed:.1f} s, stored {stored} bytes, peak RSS {rss_mb:.1f} MB (goal < 40)"
        f" -> {'PASS' if ok else 'FAIL'}",
    ]
    return ok, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--per-writer", type=int, default=200)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--only", choices=("latency", "concurrency", "memory"))
    parser.add_argument("--python", help="a venv's python to run the benchmark with instead")
    args = parser.parse_args()
    if args.python and os.path.abspath(args.python) != os.path.abspath(sys.executable):
        rest: list[str] = []
        argv = iter(sys.argv[1:])
        for arg in argv:
            if arg == "--python":
                next(argv, None)  # and its value
            elif not arg.startswith("--python="):
                rest.append(arg)
        os.execv(args.python, [args.python, os.path.abspath(__file__), *rest])
    compile_bytecode()
    base = tempfile.mkdtemp(prefix="mssendmail-bench-")
    results: list[bool] = []
    try:
        where = f"python {sys.version.split()[0]} ({sys.executable})"
        print(f"{where}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
        if args.only in (None, "latency"):
            ok, lines = bench_latency(base, args.rounds)
            results.append(ok)
            print("\n".join(lines), flush=True)
        if args.only in (None, "concurrency"):
            ok, lines = bench_concurrency(base, args.writers, args.per_writer)
            results.append(ok)
            print("\n".join(lines), flush=True)
        if args.only in (None, "memory"):
            ok, lines = bench_memory(base, args.big_mb)
            results.append(ok)
            print("\n".join(lines), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
