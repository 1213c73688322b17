"""The ends of a delivery attempt: sent, deferred, dead-lettered or put back.

Each function takes a claimed message in active/, records why, moves it,
and releases the claim. The record is written before the move, so after a
crash the message is still in active/ (and recovered) with the record
already saying what happened; the sent record in particular stops a resend.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mssendmail import meta
from mssendmail.claim import Claim
from mssendmail.spool import ACTIVE, DEAD, DEFERRED, QUEUE, SENT, Spool, write_atomic


def already_sent(spool: Spool, queue_id: str) -> bool:
    """A sent record exists: the last run died after Graph's 202, before cleanup.

    sent/<id> without .json is a message parked by sent_unrecorded().
    """
    return os.path.exists(spool.sent_path(queue_id)) or os.path.lexists(spool.path(SENT, queue_id))


def sent(spool: Spool, held: Claim, info: dict[str, Any]) -> None:
    """Record the delivery, then drop the message and its state."""
    if not already_sent(spool, held.queue_id):
        # Not fsynced, on purpose: it is whole or absent after kill -9, which
        # is all the no-resend promise needs. A power cut may lose it, and then
        # a message sent in the last seconds may be sent again (never lost);
        # two fsyncs per message were a third of the drain benchmark's time.
        write_atomic(
            spool.sent_path(held.queue_id),
            json.dumps(info, sort_keys=True).encode(),
            durable=False,
        )
    # No directory fsync after the unlink: should a crash undo it, the
    # message reappears in active/, and the durable sent record above makes
    # the next attempt finish the cleanup instead of sending again.
    os.unlink(spool.path(held.area, held.queue_id))
    meta.remove(spool, held.queue_id)
    held.release()


def sent_unrecorded(spool: Spool, held: Claim) -> None:
    """Graph took the message but the record cannot be written (disk full).

    A rename needs no free blocks: park the message itself as sent/<id>, so
    it is never sent again; sweep_sent() turns it into a record later.
    """
    spool.move(held.queue_id, held.area, SENT)
    held.area = SENT
    held.release()


def sweep_sent(spool: Spool, now: float) -> None:
    """Replace parked messages in sent/ by a minimal record once there is room."""
    for queue_id in spool.ids(SENT):
        try:
            if not os.path.exists(spool.sent_path(queue_id)):
                info = {
                    "id": queue_id,
                    "sent": os.lstat(spool.path(SENT, queue_id)).st_mtime,
                    "note": "sent; details lost: the disk was full",
                }
                write_atomic(spool.sent_path(queue_id), json.dumps(info).encode())
            os.unlink(spool.path(SENT, queue_id))
        except OSError:
            return  # still no room


def defer(spool: Spool, held: Claim, state: dict[str, Any] | None, until: float) -> None:
    """Park the message in deferred/ until `until` (its mtime is the next attempt time)."""
    if state is not None:
        meta.write(spool, held.queue_id, state)
    os.utime(spool.path(held.area, held.queue_id), (until, until))
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
