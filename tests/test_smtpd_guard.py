"""smtpd under slowloris (issue 12, finding 6): idle peers cannot hold every slot."""

from __future__ import annotations

import os
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest
from test_smtpd import Daemon, daemons, message, start  # noqa: F401  (daemons: a fixture)

from mssendmail.spool.layout import MAILDROP, Spool

pytestmark = pytest.mark.usefixtures("clean_env")


def slowloris(port: int, stop: threading.Event, every: float) -> socket.socket:
    """A connection that reads the banner, then sends one byte every `every` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(512)

    def drip() -> None:
        while not stop.wait(every):
            try:
                sock.send(b"E")
            except OSError:
                return

    threading.Thread(target=drip, daemon=True).start()
    return sock


def test_20_slow_peers_leave_room_for_a_legitimate_client(
    daemons: list[Daemon],  # noqa: F811
    tmp_path: Path,
    spool: Spool,
) -> None:
    d = start(daemons, tmp_path, SMTPD_MAX_CLIENTS="20")
    stop = threading.Event()
    attackers = [slowloris(d.port, stop, 1.0) for _ in range(20)]
    try:
        time.sleep(6)  # every slot taken, each peer idle past STRESS_IDLE
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as client:
            client.sendmail("dev@example.org", ["ops@example.org"], message("legit"))
        assert time.monotonic() - started < 5
        assert len(os.listdir(spool.dir(MAILDROP))) == 1  # queued
    finally:
        stop.set()
        for sock in attackers:
            sock.close()


def test_a_command_that_trickles_in_is_cut_at_the_command_deadline(
    daemons: list[Daemon],  # noqa: F811
    tmp_path: Path,
) -> None:
    d = start(daemons, tmp_path, SMTPD_COMMAND_TIMEOUT="2s")
    stop = threading.Event()
    sock = slowloris(d.port, stop, 0.3)  # aiosmtpd's own timeout would restart each time
    try:
        sock.settimeout(10)
        started = time.monotonic()
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - started
    finally:
        stop.set()
        sock.close()
    assert data.startswith(b"421 4.4.2"), data
    assert took < 5, took
