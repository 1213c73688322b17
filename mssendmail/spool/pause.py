"""The whole-queue pause after a configuration failure (bad secret, no consent).

Kept in state/pause.json so that `--once` runs from a timer honour it too,
instead of asking the token endpoint every minute with a bad secret.

The record holds the fingerprint of the credential settings that failed
(mssendmail.graph.fingerprint; a hash, never the secret). A worker that
starts or reloads with different settings lifts the pause at once: the
admin fixed the secret, so waiting out the backoff would only strand mail.
An admin lifts it by hand with ``mssendmail-queue resume`` (or ``retry
--all``, or ``sendmail -q``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mssendmail.spool.layout import PAUSE_FILE, Spool, unlink_quiet, write_atomic
from mssendmail.spool.meta import read_json


@dataclass(frozen=True)
class Pause:
    """A pause in force: until when, why, and for which credential settings."""

    until: float
    reason: str
    failures: int
    since: float
    fingerprint: str  # "" for a record written before fingerprints existed


def _path(spool: Spool) -> str:
    return spool.state_path(PAUSE_FILE)


def queue_paused_until(spool: Spool) -> float:
    value = read_json(_path(spool)).get("until", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def current(spool: Spool) -> dict[str, object]:
    return read_json(_path(spool))


def active(spool: Spool, now: float) -> Pause | None:
    """The pause in force at `now`, or None (an expired record counts as none)."""
    doc = read_json(_path(spool))
    until = doc.get("until")
    if not isinstance(until, (int, float)) or isinstance(until, bool) or until <= now:
        return None
    reason, failures, since, mark = (
        doc.get("reason"),
        doc.get("failures"),
        doc.get("since"),
        doc.get("credential"),
    )
    return Pause(
        until=float(until),
        reason=reason if isinstance(reason, str) else "?",
        failures=failures if isinstance(failures, int) else 1,
        since=float(since) if isinstance(since, (int, float)) else float(until),
        fingerprint=mark if isinstance(mark, str) else "",
    )


def pause_queue(
    spool: Spool,
    now: float,
    reason: str,
    retry_min: float,
    retry_max: float,
    fingerprint: str = "",
) -> float:
    """Pause (or extend the pause of) the queue with doubling backoff; returns until."""
    old = read_json(_path(spool))
    failures = int(old.get("failures", 0)) + 1 if isinstance(old.get("failures"), int) else 1
    if float(old.get("until", 0) or 0) > now:
        return float(old["until"])  # several threads failing at once count once
    if old and old.get("credential") != fingerprint:
        failures = 1  # other settings failed now: a new problem, not the old one again
    delay = min(retry_max, retry_min * 2.0 ** min(failures - 1, 30))
    until = now + delay
    record = {
        "until": until,
        "failures": failures,
        "reason": reason,
        "since": old.get("since", now) if failures > 1 else now,
        "credential": fingerprint,
    }
    write_atomic(_path(spool), json.dumps(record).encode())
    return until


def clear_queue_pause(spool: Spool) -> None:
    unlink_quiet(_path(spool))


def lift(spool: Spool, now: float) -> Pause | None:
    """Lift the pause; returns the one that was in force, if any."""
    was = active(spool, now)
    clear_queue_pause(spool)
    return was


def lift_if_changed(spool: Spool, now: float, fingerprint: str) -> Pause | None:
    """Lift a pause caused by other credential settings than `fingerprint`.

    A record without a fingerprint (older versions) is lifted too: which
    settings failed cannot be told, and one token request settles it.
    """
    was = active(spool, now)
    if was is None or was.fingerprint == fingerprint:
        return None
    clear_queue_pause(spool)
    return was
