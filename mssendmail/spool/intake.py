"""Pick-up verbs: the file operations that take an entry from maildrop/ into queue/.

delivery/pickup.py decides what an entry is (a valid submission, garbage,
someone else's); this module does what follows, on paths only it builds:

- ``QueueCopy``: the verified private copy, written as an flocked temp file
  in queue/ and linked (never renamed over) to ``queue/<id>``, so that two
  workers picking up the same submission cannot both queue it;
- ``drop_originals``: the maildrop/ originals go only after their copies
  are durable; a crash in between leaves duplicates the next round drops;
- ``quarantine``: garbage goes to corrupt/ under a new id with a reason
  record, as a copy the submitter cannot change (regular files) or
  renamed unread (anything else); ``expire_corrupt`` removes it after
  CORRUPT_RETENTION.
"""

from __future__ import annotations

import errno
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
# Bounded work per hostile entry: enough to see what was planted, not a copy of any size.
QUARANTINE_KEEP = 1 << 20


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
    """Take maildrop/<name>, whatever it is, to corrupt/<new id> with a reason record.

    A regular file is copied (its first QUARANTINE_KEEP bytes) into a file
    the worker owns, and the original is removed: renamed, it would still
    be the submitter's inode, and a submitter holding it open could go on
    writing into what the admin inspects. One the worker cannot read is
    removed and stood in for by an empty file of ours; the reason says so.
    Anything else (a FIFO, a symlink, a file with other hard links) is
    renamed, never read. Returns the new
    name, or None when the entry is gone already. CannotMove when it can be
    neither copied nor renamed (a directory: renaming it elsewhere needs
    write access to it, which only its owner has); other OSErrors are ours.
    """
    target = new_id()
    source = spool.path(MAILDROP, name)
    try:
        regular = stat.S_ISREG(os.lstat(source).st_mode)
        kept = _copy_out(spool, source, target) if regular else None
        if kept is None:
            os.rename(source, spool.path(CORRUPT, target))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotMove(exc) from exc
    fsync_dir(spool.dir(CORRUPT))
    fsync_dir(spool.dir(MAILDROP))
    info: dict[str, object] = {"original_name": name, "reason": reason, "time": time.time()}
    info.update(kept or {"kept": "renamed"})
    write_atomic(spool.reason_path(CORRUPT, target), json.dumps(info).encode())
    return target


def _copy_out(spool: Spool, source: str, target: str) -> dict[str, object] | None:
    """Copy a regular maildrop/ file to corrupt/<target> and remove the original.

    None when it is not a regular file of one link after all (rename it instead).
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.ELOOP):
            raise
        # Unreadable to us: an empty file of ours stands in for it, and the
        # submitter's inode goes, so nothing in corrupt/ is theirs to change.
        _write_copy(spool, -1, 0, target)
        os.unlink(source)
        return {"kept": "nothing", "why": f"cannot be read: {exc.strerror}", "bytes": 0}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_nlink != 1:
            # Another name shares the inode, and its owner can write through
            # that one whatever we do: move this name as it is, as before.
            return None
        kept = _write_copy(spool, fd, st.st_size, target)
        _unlink_same(source, st)
    finally:
        os.close(fd)
    return {"kept": "copy", "size": st.st_size, "bytes": kept}


def _unlink_same(path: str, st: os.stat_result) -> None:
    """Remove path if it is still the inode we looked at (a swapped-in one stays for next time).

    maildrop/ is the worker's directory: the sticky bit lets its owner remove any entry.
    """
    current = os.lstat(path)
    if (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev):
        os.unlink(path)


def _write_copy(spool: Spool, src: int, size: int, target: str) -> int:
    """corrupt/<target> := the first QUARANTINE_KEEP bytes of src (temp, fsync, rename)."""
    temp = spool.path(CORRUPT, f"{TEMP_PREFIX}{target}.{os.getpid()}.{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(temp, flags, COPY_MODE)
    try:
        fcntl.flock(out, fcntl.LOCK_EX)  # a live writer, for sweep_temps()
        offset, limit = 0, min(size, QUARANTINE_KEEP)
        while offset < limit:
            block = os.pread(src, min(1 << 16, limit - offset), offset)
            if not block:
                break  # it shrank: keep what there was
            view = memoryview(block)
            while view:
                view = view[os.write(out, view) :]
            offset += len(block)
        os.fsync(out)
        os.rename(temp, spool.path(CORRUPT, target))
    except BaseException:
        os.close(out)
        unlink_quiet(temp)
        raise
    os.close(out)
    return offset


def expire_corrupt(spool: Spool, keep: float, now: float) -> int:
    """Remove corrupt/ entries and reason records quarantined more than `keep` seconds ago.

    Their age is the inode's ctime, which the rename into corrupt/ (or the
    copy) set and which no submitter can move back with utime(); an mtime
    would be whatever the submitter chose. Temp files are sweep_temps()'s.
    Returns how many entries went.
    """
    removed = 0
    for name in os.listdir(spool.dir(CORRUPT)):
        if name.startswith(TEMP_PREFIX):
            continue
        path = spool.path(CORRUPT, name)
        try:
            st = os.lstat(path)
            if now - st.st_ctime > keep and not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


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
