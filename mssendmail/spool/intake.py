"""Pick-up verbs: the file operations that take an entry from maildrop/ into queue/.

delivery/pickup.py decides what an entry is (a valid submission, garbage,
someone else's); this module does what follows, on paths only it builds:

- ``QueueCopy``: the verified private copy, written as an flocked temp file
  in queue/ and linked (never renamed over) to ``queue/<id>``, so that two
  workers picking up the same submission cannot both queue it;
- ``drop_originals``: the maildrop/ originals go only after their copies
  are durable; a crash in between leaves duplicates the next round drops;
- ``quarantine``: garbage goes to corrupt/ under a new id with a reason
  record, without being read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable

from mssendmail.spool.layout import (
    CORRUPT,
    MAILDROP,
    QUEUE,
    TEMP_PREFIX,
    Spool,
    fsync_dir,
    new_id,
    unlink_quiet,
    write_atomic,
)

COPY_MODE = 0o640


class QueueCopy:
    """A temp copy in queue/ (``tmp.<id>.<pid>.<random>``), flocked while we live.

    The flock tells sweep_temps() that its writer is alive.
    """

    def __init__(self, spool: Spool, name: str) -> None:
        self.spool = spool
        self.name = name
        self.path = spool.path(QUEUE, f"{TEMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, COPY_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.discard()
            raise

    def enqueue(self) -> None:
        """fsync the copy and link it to queue/<id>; FileExistsError if another worker did.

        The caller runs Spool.sync(QUEUE) once for the batch.
        """
        os.fsync(self.fd)
        os.link(self.path, self.spool.path(QUEUE, self.name))

    def discard(self) -> None:
        """Close the copy and remove its temp name (queued or not); safe to call twice."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            unlink_quiet(self.path)


def drop_original(spool: Spool, name: str) -> None:
    """Remove maildrop/<name> (already queued: a crash came between copy and removal)."""
    unlink_quiet(spool.path(MAILDROP, name))  # another worker may have dropped it first


def drop_originals(spool: Spool, names: Iterable[str]) -> None:
    """Remove the originals of queued copies, then make maildrop/ durable."""
    for name in names:
        unlink_quiet(spool.path(MAILDROP, name))
    fsync_dir(spool.dir(MAILDROP))


class CannotMove(Exception):
    """The entry stays in maildrop/: renaming it failed with `error`."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


def quarantine(spool: Spool, name: str, reason: str) -> str | None:
    """Move maildrop/<name>, whatever it is, to corrupt/<new id> with a reason record.

    Returns the new name, or None when the entry is gone already. CannotMove
    when the rename fails (a directory: renaming it elsewhere needs write
    access to it, which only its owner has); other OSErrors are ours.
    """
    target = new_id()
    try:
        os.rename(spool.path(MAILDROP, name), spool.path(CORRUPT, target))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotMove(exc) from exc
    fsync_dir(spool.dir(CORRUPT))
    fsync_dir(spool.dir(MAILDROP))
    info = {"original_name": name, "reason": reason, "time": time.time()}
    write_atomic(spool.reason_path(CORRUPT, target), json.dumps(info).encode())
    return target


def remove_junk(spool: Spool, name: str) -> None:
    """Remove a maildrop/ entry that is no mail; a directory with its contents.

    shutil.rmtree works through directory fds on Linux and never follows a
    symlink out of the tree. Gone already is fine; other OSErrors propagate.
    """
    path = spool.path(MAILDROP, name)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
