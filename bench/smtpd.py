"""Benchmark: how many 4 KB messages/s mssendmail-smtpd queues durably.

Starts the real ``mssendmail-smtpd`` on a free loopback port with a fresh
spool, then N concurrent smtplib clients (default 10) each send their share
of the messages. Every 250 reply means the record was fsynced and renamed
into maildrop/; at the end every record is verified (checksum footer), so
the number counts only mail that is really on disk.

    .venv/bin/python bench/smtpd.py [--messages 2000] [--clients 10]
        [--size 4096] [--reconnect] [--queue-dir DIR] [--record]

It runs twice: one SMTP session per client, then a new connection per
message (what most devices do); --reconnect runs only the second.
--queue-dir puts the spool on a chosen file system (default: a temp dir);
--record writes the result under "## SMTP listener" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mssendmail.spool.layout import MAILDROP, Spool, init_tree
from mssendmail.spool.record import verify

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## SMTP listener"
TARGET = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_message(size: int, n: int) -> bytes:
    head = (
        f"From: bench@example.org\r\nTo: sink@example.org\r\nSubject: bench {n}\r\n"
        f"Message-ID: <bench-{n}@example.org>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[:size]


def start_smtpd(queue_dir: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).with_name("mssendmail-smtpd")
    env = {
        **os.environ,
        "MSSENDMAIL_CONFIG": "/nonexistent",
        "QUEUE_DIR": queue_dir,
        "SMTPD_LISTEN": f"127.0.0.1:{port}",
        "SMTPD_MAX_CLIENTS": "50",
    }
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(script)], env=env, stderr=err)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"mssendmail-smtpd did not start: {log.read_text()}")


def client(
    port: int, count: int, size: int, reconnect: bool, latencies: list[float], errors: list[str]
) -> None:
    session: smtplib.SMTP | None = None
    try:
        for n in range(count):
            if session is None:
                session = smtplib.SMTP("127.0.0.1", port, timeout=30)
            message = make_message(size, n)
            started = time.perf_counter()
            session.sendmail("bench@example.org", ["sink@example.org"], message)
            latencies.append(time.perf_counter() - started)
            if reconnect:
                session.quit()
                session = None
        if session is not None:
            session.quit()
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(repr(exc))


def verify_spool(spool: Spool) -> int:
    good = 0
    for name in spool.ids(MAILDROP):
        with open(spool.path(MAILDROP, name), "rb") as fh:
            verify(fh)
        good += 1
    return good


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def record(text: str) -> None:
    """Replace (or add) our section of RESULTS.md, keeping every other section."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = old.splitlines()
    out: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("## "):
            skipping = line.strip() == HEADING
        if not skipping:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    RESULTS.write_text("\n".join(out) + "\n\n" + text.rstrip() + "\n")


def run(args: argparse.Namespace, reconnect: bool) -> tuple[str, bool]:
    """One measured run against a fresh spool and daemon; (summary line, target met)."""
    base = tempfile.mkdtemp(prefix="mssendmail-bench-", dir=args.queue_dir)
    queue_dir = os.path.join(base, "queue")
    init_tree(queue_dir)
    port = free_port()
    proc = start_smtpd(queue_dir, port, Path(base) / "smtpd.log")
    latencies: list[float] = []
    errors: list[str] = []
    per_client = args.messages // args.clients
    threads = [
        threading.Thread(
            target=client, args=(port, per_client, args.size, reconnect, latencies, errors)
        )
        for _ in range(args.clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)

    sent = per_client * args.clients
    on_disk = verify_spool(Spool(queue_dir))
    rate = on_disk / elapsed
    shutil.rmtree(base)
    mode = "a new connection per message" if reconnect else "one session per client"
    summary = (
        f"{on_disk}/{sent} messages of {args.size} B from {args.clients} concurrent smtplib "
        f"clients, {mode}: **{rate:.0f} msgs/s**, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, {len(errors)} client errors"
    )
    print(summary)
    for error in errors[:5]:
        print("  error:", error)
    return summary, on_disk == sent and not errors and rate >= TARGET


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--reconnect", action="store_true", help="only the per-message mode")
    parser.add_argument("--queue-dir")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    modes = [True] if args.reconnect else [False, True]
    results = [run(args, reconnect) for reconnect in modes]
    ok = all(met for _, met in results)
    if args.record:
        lines = "".join(f"- {summary}\n" for summary, _ in results)
        load = os.getloadavg()[0]
        record(
            f"{HEADING}\n\n"
            f"`.venv/bin/python bench/smtpd.py` ({time.strftime('%Y-%m-%d')}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.1f} at "
            f"the end, spool on {args.queue_dir or tempfile.gettempdir()}; clients and daemon "
            "on the same machine):\n\n"
            f"{lines}\n"
            "Every 250 reply came after fsync + rename + directory fsync, and every record was "
            f"verified afterwards. Target >= {TARGET:.0f} msgs/s: {'met' if ok else 'NOT met'}.\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
