"""The ends of a delivery attempt: sent, deferred, dead-lettered or put back.

Each function takes a claimed message in active/, records why, moves it,
and releases the claim. Records are written before the move, so after a
crash the message is still in active/ (and recovered) with the record
already saying what happened. A sent message is different: its move into
sent/ is itself the record that stops a resend.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mssendmail.logs import kv
from mssendmail.spool import meta, sentrecord
from mssendmail.spool.claim import Claim
from mssendmail.spool.layout import ACTIVE, DEAD, DEFERRED, QUEUE, SENT, Spool, write_atomic

log = logging.getLogger("mssendmail.delivery.outcome")


def already_sent(spool: Spool, queue_id: str) -> bool:
    """A sent record exists: the last run died after Graph's 202, before cleanup.

    sent/<id> without .json is parked: a message sent_unrecorded() kept, or
    a record that a crash inside sent() left half made.
    """
    return spool.is_sent(queue_id)


def sent(spool: Spool, held: Claim, info: dict[str, Any]) -> None:
    """Turn the sent message into its own record: drop the body, keep the metadata.

    The record is the message's own inode (spool/sentrecord.py); the first
    rename into sent/ is the no-resend promise. Nothing is fsynced, on
    purpose: a power cut within seconds of a send may resend, never lose.
    """
    sentrecord.record_sent(spool, held, info, _unrecorded)
    meta.remove(spool, held.queue_id)
    held.release()


def _unrecorded(queue_id: str, exc: OSError) -> None:
    log.error(kv(event="sent-unrecorded", id=queue_id, error=exc.strerror or str(exc)))


def sent_unrecorded(spool: Spool, held: Claim) -> None:
    """Graph took the message but the record cannot be written (disk full).

    A rename needs no free blocks: park the message itself as sent/<id>, so
    it is never sent again; sweep_sent() turns it into a record later.
    """
    spool.move(held.queue_id, held.area, SENT)
    held.area = SENT
    held.release()


def sweep_sent(spool: Spool, now: float) -> None:
    """Turn parked entries in sent/ into records once there is room."""
    sentrecord.sweep_parked(spool, _unrecorded)


def defer(spool: Spool, held: Claim, state: dict[str, Any] | None, until: float) -> None:
    """Park the message in deferred/ until `until` (its mtime is the next attempt time)."""
    if state is not None:
        meta.write(spool, held.queue_id, state)
    spool.set_due(held.queue_id, until, held.area)
    spool.move(held.queue_id, held.area, DEFERRED)
    held.area = DEFERRED
    held.release()


def bury(spool: Spool, held: Claim, state: dict[str, Any], reason: dict[str, Any]) -> None:
    """Dead-letter: keep the untouched message and a reason record in dead/."""
    write_atomic(
        spool.reason_path(DEAD, held.queue_id), json.dumps(reason, sort_keys=True).encode()
    )
    meta.write(spool, held.queue_id, state)
    spool.move(held.queue_id, held.area, DEAD)
    held.area = DEAD
    held.release()


def put_back(spool: Spool, held: Claim) -> None:
    """Return an untried message to queue/ (shutdown, paused queue)."""
    if held.area == ACTIVE:
        spool.move(held.queue_id, ACTIVE, QUEUE)
        held.area = QUEUE
    held.release()
