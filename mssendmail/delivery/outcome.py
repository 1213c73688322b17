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
import os
from typing import Any

from mssendmail.logs import kv
from mssendmail.spool import meta, status
from mssendmail.spool.claim import Claim
from mssendmail.spool.layout import ACTIVE, DEAD, DEFERRED, QUEUE, SENT, Spool, write_atomic

log = logging.getLogger("mssendmail.delivery.outcome")

MAX_RECORD = 1 << 20  # a parked entry bigger than this is a message, not a record


def already_sent(spool: Spool, queue_id: str) -> bool:
    """A sent record exists: the last run died after Graph's 202, before cleanup.

    sent/<id> without .json is parked: a message sent_unrecorded() kept, or
    a record that a crash inside sent() left half made.
    """
    return status.is_sent(spool, queue_id)


def sent(spool: Spool, held: Claim, info: dict[str, Any]) -> None:
    """Turn the sent message into its own record: drop the body, keep the metadata.

    The message's inode becomes the record (rename into sent/, truncate,
    write, rename to <id>.json) instead of a new file plus an unlink: a
    drain of 100,000 messages made ext4 (without a journal) scan past every
    recently freed inode on each new file. The first rename is the no-resend
    promise: from then on the message is "sent" whatever happens next.
    Nothing here is fsynced, on purpose: each step survives kill -9, and a
    power cut within seconds of a send may resend, never lose.
    """
    qid = held.queue_id
    if already_sent(spool, qid):
        # A previous run died after recording it: finish the cleanup only.
        os.unlink(spool.path(held.area, qid))
    else:
        spool.move(qid, held.area, SENT, durable=False)
        held.area = SENT
        _rewrite_parked(spool, qid, json.dumps(info, sort_keys=True).encode())
    meta.remove(spool, qid)
    held.release()


def _rewrite_parked(spool: Spool, queue_id: str, record: bytes) -> None:
    """sent/<id> (the message) -> sent/<id>.json (its record), in the same inode.

    A failure (disk full) leaves sent/<id> parked; sweep_sent() finishes it.
    """
    path = spool.path(SENT, queue_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, record)
        finally:
            os.close(fd)
        os.rename(path, spool.sent_path(queue_id))
    except OSError as exc:
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
    """Turn parked entries in sent/ into records once there is room.

    A parked entry is a message (sent_unrecorded, or a crash inside sent())
    or a record that a crash kept from its final name.
    """
    for queue_id in spool.ids(SENT):
        path = spool.path(SENT, queue_id)
        try:
            if os.path.exists(spool.sent_path(queue_id)):
                os.unlink(path)
                continue
            small = os.lstat(path).st_size <= MAX_RECORD
            info = meta.read_json(path) if small else {}
            if info.get("id") != queue_id:
                info = {
                    "id": queue_id,
                    "sent": os.lstat(path).st_mtime,
                    "note": "sent; details lost (disk full or a crash)",
                }
            _rewrite_parked(spool, queue_id, json.dumps(info, sort_keys=True).encode())
            if os.path.lexists(path):
                return  # still no room
        except OSError:
            return


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
