"""Logging (key=value, reopened after logrotate) and the per-mailbox gate."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mssendmail import logs
from mssendmail.delivery.gate import PER_MAILBOX_LIMIT, MailboxGate


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


def peak_inside(
    entries: list[tuple[MailboxGate, str]], hold: float, group: Callable[[str], str] = str
) -> collections.Counter[str]:
    """One thread per (gate, mailbox) holds gate.slot(mailbox) for `hold` seconds.

    Returns the most threads that were inside at once, per group(mailbox).
    """
    inside: collections.Counter[str] = collections.Counter()
    peak: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work(gate: MailboxGate, mailbox: str) -> None:
        key = group(mailbox)
        with gate.slot(mailbox):
            with lock:
                inside[key] += 1
                peak[key] = max(peak[key], inside[key])
            time.sleep(hold)
            with lock:
                inside[key] -= 1

    threads = [threading.Thread(target=work, args=entry) for entry in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return peak


def test_gate_never_lets_more_than_four_in_per_mailbox() -> None:
    gate = MailboxGate()
    peak = peak_inside([(gate, m) for m in ["a@x", "A@X", "b@x"] * 6], 0.02, group=str.lower)
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
    peak = peak_inside([(gates[i % 2], "relay@x") for i in range(12)], 0.05)
    assert peak["relay@x"] == PER_MAILBOX_LIMIT


def test_in_flight_cap_holds_across_mailboxes() -> None:
    gate = MailboxGate(in_flight=2)
    peak = peak_inside([(gate, f"m{i}@x") for i in range(8)], 0.03, group=lambda m: "all")
    assert peak["all"] == 2
