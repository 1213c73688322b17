"""Logging (key=value, reopened after logrotate) and the per-mailbox gate."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from mssendmail import logs
from mssendmail.deliver import PER_MAILBOX_LIMIT, MailboxGate


def test_kv_quotes_values_with_spaces_and_dashes_empty_ones() -> None:
    line = logs.kv(id="abc", reason='bad "thing" here', code=None, status=202)
    assert line == 'id=abc reason="bad \\"thing\\" here" code=- status=202'


def test_kv_never_breaks_a_line() -> None:
    assert "\n" not in logs.kv(error="one\ntwo\r\nthree")


def test_log_file_is_reopened_after_logrotate_moves_it(tmp_path: Path) -> None:
    logs.setup(str(tmp_path))
    log = logging.getLogger("mssendmail.test")
    log.info(logs.kv(event="before"))
    live = tmp_path / logs.LOG_NAME
    os.rename(live, tmp_path / "mssendmail.log.1")
    log.info(logs.kv(event="after"))
    assert "event=before" in (tmp_path / "mssendmail.log.1").read_text()
    assert "event=after" in live.read_text()
    assert "event=after" not in (tmp_path / "mssendmail.log.1").read_text()


def test_gate_never_lets_more_than_four_in_per_mailbox() -> None:
    gate = MailboxGate()
    inside = {"a@x": 0, "b@x": 0}
    peak = {"a@x": 0, "b@x": 0}
    lock = threading.Lock()

    def work(mailbox: str) -> None:
        key = mailbox.lower()
        with gate.slot(mailbox):
            with lock:
                inside[key] += 1
                peak[key] = max(peak[key], inside[key])
            time.sleep(0.02)
            with lock:
                inside[key] -= 1

    threads = [threading.Thread(target=work, args=(m,)) for m in ["a@x", "A@X", "b@x"] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak["a@x"] == PER_MAILBOX_LIMIT  # case-insensitive: A@X shares a@x's slots
    assert 1 <= peak["b@x"] <= PER_MAILBOX_LIMIT


def test_gate_pause_only_extends() -> None:
    gate = MailboxGate()
    gate.pause("a@x", 100.0)
    gate.pause("A@x", 50.0)
    assert gate.paused_until("a@X") == 100.0
    assert gate.paused_until("other@x") == 0.0


def test_file_slots_hold_the_limit_across_gates(tmp_path: Path) -> None:
    """Two gates on one lock directory stand for two worker processes."""
    gates = [MailboxGate(str(tmp_path)), MailboxGate(str(tmp_path))]
    inside = 0
    peak = 0
    lock = threading.Lock()

    def work(gate: MailboxGate) -> None:
        nonlocal inside, peak
        with gate.slot("relay@x"):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work, args=(gates[i % 2],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == PER_MAILBOX_LIMIT


def test_in_flight_cap_holds_across_mailboxes() -> None:
    gate = MailboxGate(in_flight=2)
    inside = 0
    peak = 0
    lock = threading.Lock()

    def work(mailbox: str) -> None:
        nonlocal inside, peak
        with gate.slot(mailbox):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.03)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work, args=(f"m{i}@x",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
