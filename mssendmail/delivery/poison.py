"""Unexpected exceptions during one attempt: counted against the message, never a stall.

A bug that one message triggers (RecursionError in a parser, OverflowError
on a strange number, anything else nobody classified) used to send the
message back to queue/ and pause all dispatch for 10 s, for ever: one
message stalled everyone. Now such an exception is a *crash* of that
message's attempt. It is recorded in meta/<id>.json (``crashes``, the
exception class and a one-line reason in ``last_error``) and the message is
deferred briefly; at the CRASH_LIMIT-th crash it is dead-lettered, naming
the class and the reason. Other messages go on as if nothing happened.

Only errors that are about the host, not the message, still stall the
worker: an OSError (the disk, the spool, file descriptors) or a
MemoryError. Credentials and the network are DeliveryErrors and handled
by attempt.py before anything gets here.
"""

from __future__ import annotations

import logging
from typing import Any

from mssendmail.delivery import outcome
from mssendmail.logs import kv
from mssendmail.spool import meta
from mssendmail.spool.claim import Claim

log = logging.getLogger("mssendmail.delivery.attempt")

CRASH_LIMIT = 3  # the third unexpected exception dead-letters the message
CRASH_DELAY = 2.0  # seconds before the next try, times the crash count
REASON_LIMIT = 300


def is_global(exc: BaseException) -> bool:
    """An error about the host (disk, fds, memory), not about the message."""
    return isinstance(exc, (OSError, MemoryError))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > REASON_LIMIT:
        text = text[: REASON_LIMIT - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def crashes(state: dict[str, Any]) -> int:
    value = state.get("crashes", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def crashed(spool: Any, held: Claim, exc: Exception, now: float, retry_max: float) -> str:
    """Record a crash of a claimed message; defer it, or bury it at CRASH_LIMIT.

    Returns "dead" or "deferred". An OSError while recording propagates:
    the caller puts the message back and stalls, as for any disk error.
    """
    qid = held.queue_id
    state = meta.read(spool, qid)
    count = crashes(state) + 1
    state["crashes"] = count
    state["attempts"] = meta.attempts(state) + 1
    reason = one_line(exc)
    error = {
        "time": now,
        "class": "crash",
        "status": None,
        "code": type(exc).__name__,
        "message": reason,
        "request_id": None,
    }
    state["last_error"] = error
    meta.add_event(state, now, "crash", reason)
    log.error(kv(event="attempt-crash", id=qid, crashes=count, limit=CRASH_LIMIT, error=reason))
    if count >= CRASH_LIMIT:
        why = f"unexpected error in {count} attempts"
        meta.add_event(state, now, "dead", reason)
        outcome.bury(spool, held, state, {**error, "attempts": state["attempts"], "why": why})
        log.warning(
            kv(event="dead-letter", id=qid, why=why, code=type(exc).__name__, reason=reason)
        )
        return "dead"
    until = now + min(retry_max, CRASH_DELAY * count)
    state["next_attempt"] = until
    outcome.defer(spool, held, state, until)
    return "deferred"
