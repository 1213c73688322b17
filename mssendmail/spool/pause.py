"""The whole-queue pause after a configuration failure (bad secret, no consent).

Kept in state/pause.json so that `--once` runs from a timer honour it too,
instead of asking the token endpoint every minute with a bad secret.
"""

from __future__ import annotations

import json

from mssendmail.spool.layout import PAUSE_FILE, Spool, unlink_quiet, write_atomic
from mssendmail.spool.meta import read_json


def _path(spool: Spool) -> str:
    return spool.state_path(PAUSE_FILE)


def queue_paused_until(spool: Spool) -> float:
    value = read_json(_path(spool)).get("until", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def current(spool: Spool) -> dict[str, object]:
    return read_json(_path(spool))


def pause_queue(spool: Spool, now: float, reason: str, retry_min: float, retry_max: float) -> float:
    """Pause (or extend the pause of) the queue with doubling backoff; returns until."""
    old = read_json(_path(spool))
    failures = int(old.get("failures", 0)) + 1 if isinstance(old.get("failures"), int) else 1
    if float(old.get("until", 0) or 0) > now:
        return float(old["until"])  # several threads failing at once count once
    delay = min(retry_max, retry_min * 2.0 ** min(failures - 1, 30))
    until = now + delay
    record = {
        "until": until,
        "failures": failures,
        "reason": reason,
        "since": old.get("since", now),
    }
    write_atomic(_path(spool), json.dumps(record).encode())
    return until


def clear_queue_pause(spool: Spool) -> None:
    unlink_quiet(_path(spool))
