"""sent/ records: turning a sent message into its own record, and finishing parked ones.

The message's inode becomes the record (rename into sent/, truncate, write,
rename to <id>.json) instead of a new file plus an unlink: a drain of
100,000 messages made ext4 (without a journal) scan past every recently
freed inode on each new file. The first rename is the no-resend promise:
from then on the message is "sent" whatever happens next (spool/status.py).
Nothing here is fsynced, on purpose: each step survives kill -9, and a power
cut within seconds of a send may resend, never lose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from mssendmail.spool import meta
from mssendmail.spool.claim import Claim
from mssendmail.spool.layout import SENT, Spool

MAX_RECORD = 1 << 20  # a parked entry bigger than this is a message, not a record

Unrecorded = Callable[[str, OSError], None]  # told of each record that could not be written


def record_sent(spool: Spool, held: Claim, info: dict[str, Any], unrecorded: Unrecorded) -> None:
    """Move the claimed message into sent/ and make it its record (held.area becomes SENT).

    When a sent record exists already (a previous run died after writing
    it) only the claimed copy goes.
    """
    qid = held.queue_id
    if spool.is_sent(qid):
        os.unlink(spool.path(held.area, qid))
        return
    spool.move(qid, held.area, SENT, durable=False)
    held.area = SENT
    error = rewrite_parked(spool, qid, json.dumps(info, sort_keys=True).encode())
    if error is not None:
        unrecorded(qid, error)


def rewrite_parked(spool: Spool, queue_id: str, record: bytes) -> OSError | None:
    """sent/<id> (the message) -> sent/<id>.json (its record), in the same inode.

    A failure (disk full) leaves sent/<id> parked and is returned;
    sweep_parked() finishes it.
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
        return exc
    return None


def sweep_parked(spool: Spool, unrecorded: Unrecorded) -> None:
    """Turn parked entries in sent/ into records once there is room.

    A parked entry is a message (parked on a full disk, or a crash inside
    record_sent()) or a record that a crash kept from its final name.
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
            error = rewrite_parked(spool, queue_id, json.dumps(info, sort_keys=True).encode())
            if error is not None:
                unrecorded(queue_id, error)
            if os.path.lexists(path):
                return  # still no room
        except OSError:
            return
