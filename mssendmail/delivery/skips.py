"""Maildrop entries pickup cannot take, and errors that must stall it instead.

Any local user can put anything in maildrop/: a directory (which the
worker cannot rename into corrupt/, since that needs write access to the
directory itself), a FIFO, a file it cannot open. Such an entry is tried
once, then remembered here by name and inode and logged once; later rounds
pass over it without a system call beyond one lstat. ``mssendmail-queue
purge-maildrop`` (root or group mssendmail) removes them.

Running out of something (file descriptors, memory, disk) says nothing
about the entry: pickup stops the round and backs off, and the entry is
neither rejected nor quarantined.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from mssendmail.logs import kv

log = logging.getLogger("mssendmail.delivery.pickup")

# errno values that mean "this process or this disk is short of something".
RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT, errno.ENOBUFS}
)
MAX_REMEMBERED = 100_000  # beyond this, forget the oldest (they are tried once more)


class Stalled(Exception):
    """Pickup cannot go on for reasons that are not the entry's: back off and retry.

    ``queued`` holds the ids this round did queue before it stopped.
    """

    def __init__(self, cause: BaseException, queued: list[str] | None = None) -> None:
        super().__init__(describe(cause))
        self.cause = cause
        self.queued: list[str] = queued or []


def is_resource_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS
    )


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


class SkipList:
    """Entries this process tried once and passes over from then on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, path: str, name: str, reason: str) -> None:
        """Remember an entry and log it, once per name and inode."""
        try:
            st = os.lstat(path)
        except OSError:
            return  # gone already
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if self._seen.get(name) == key:
                return
            if len(self._seen) >= MAX_REMEMBERED:
                del self._seen[next(iter(self._seen))]
            self._seen[name] = key
        log.warning(
            kv(
                event="maildrop-skipped",
                entry=name,
                uid=st.st_uid,
                reason=reason,
                fix="mssendmail-queue purge-maildrop",
            )
        )

    def has(self, path: str, name: str) -> bool:
        """True for a remembered entry that is still the same inode."""
        with self._lock:
            key = self._seen.get(name)
        if key is None:
            return False
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == key:
            return True
        with self._lock:
            self._seen.pop(name, None)  # gone or replaced: look at it afresh
        return False
