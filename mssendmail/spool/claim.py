"""Claims: who may work on a message right now.

A claim is an flock on the message file plus its move into active/. The
lock is taken *before* the rename, so a worker that finds an unlocked file
in active/ knows its claimer died (the kernel drops flocks with the process)
and may put it back. Two workers, or a worker and an admin command, can never
hold the same message: the loser of the flock or of the rename walks away.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass

from mssendmail.spool.layout import ACTIVE, QUEUE, Spool


@dataclass
class Claim:
    """A locked message; `area` is where it lives now (active/ after claim())."""

    queue_id: str
    area: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock(spool: Spool, queue_id: str, area: str) -> Claim | None:
    """Lock a message where it is, or None if it is gone or someone else holds it."""
    path = spool.path(area, queue_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file may have moved on between open() and flock().
        st, current = os.fstat(fd), os.lstat(path)
        if (st.st_ino, st.st_dev) != (current.st_ino, current.st_dev):
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return Claim(queue_id, area, fd)


def claim(spool: Spool, queue_id: str, area: str) -> Claim | None:
    """Lock a message and move it into active/."""
    held = lock(spool, queue_id, area)
    if held is None:
        return None
    try:
        # Not fsynced: if a crash loses this rename the message is simply
        # still queued, and a message found in active/ is recovered anyway.
        spool.move(queue_id, area, ACTIVE, durable=False)
    except FileNotFoundError:
        held.release()
        return None
    held.area = ACTIVE
    return held


def recover(spool: Spool, on_recover: Callable[[str], None] | None = None) -> list[str]:
    """Put back into queue/ what dead workers left in active/.

    on_recover(queue_id) runs under the lock, before the move: a crash in
    between leaves the message in active/ for the next recovery.
    """
    recovered = []
    for queue_id in spool.ids(ACTIVE):
        held = lock(spool, queue_id, ACTIVE)
        if held is None:
            continue  # a live worker holds it
        try:
            if on_recover is not None:
                on_recover(queue_id)
            spool.move(queue_id, ACTIVE, QUEUE)
            recovered.append(queue_id)
        except FileNotFoundError:
            pass
        finally:
            held.release()
    return recovered
