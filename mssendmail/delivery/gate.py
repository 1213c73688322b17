"""The mailbox gate: Graph's per-mailbox limits, across threads and processes.

Graph allows at most PER_MAILBOX_LIMIT concurrent requests per mailbox
(MailboxConcurrency) and answers 429 beyond it; a Throttled answer pauses
every send to that mailbox until its Retry-After. delivery/attempt.py takes
a slot around each send and asks the gate whether the mailbox is paused.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PER_MAILBOX_LIMIT = 4  # Graph's MailboxConcurrency
SLOT_POLL = 0.05


class MailboxGate:
    """Per-mailbox throttle pauses and in-flight limits.

    The limit holds across processes (the service plus an admin's --once):
    a send first takes one of PER_MAILBOX_LIMIT flocked slot files for its
    mailbox in state/. The files are opened once per process and locked
    with fcntl directly: filelock's per-acquire bookkeeping was a visible
    share of the worker's CPU per message (bench/RESULTS.md, Drain). Without
    a lock directory (unit tests) the in-process semaphore alone does the job.
    """

    def __init__(self, lock_dir: str | None = None, in_flight: int | None = None) -> None:
        self.lock_dir = lock_dir
        # CONCURRENCY caps requests in flight; the worker runs a few more
        # threads so claim/verify/prepare overlap with the network.
        self._in_flight = threading.BoundedSemaphore(in_flight) if in_flight else None
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._fds: dict[tuple[str, int], int] = {}
        self._taken: set[tuple[str, int]] = set()

    def paused_until(self, mailbox: str) -> float:
        with self._lock:
            return self._until.get(mailbox.lower(), 0.0)

    def pause(self, mailbox: str, until: float) -> None:
        with self._lock:
            key = mailbox.lower()
            self._until[key] = max(until, self._until.get(key, 0.0))

    @contextmanager
    def slot(self, mailbox: str) -> Iterator[None]:
        with self._lock:
            sem = self._slots.setdefault(
                mailbox.lower(), threading.BoundedSemaphore(PER_MAILBOX_LIMIT)
            )
        with sem:
            taken = self._take_file_slot(mailbox) if self.lock_dir is not None else None
            try:
                if self._in_flight is None:
                    yield
                else:
                    with self._in_flight:
                        yield
            finally:
                if taken is not None:
                    with self._lock:
                        fcntl.flock(self._fds[taken], fcntl.LOCK_UN)
                        self._taken.discard(taken)

    def _take_file_slot(self, mailbox: str) -> tuple[str, int]:
        key = hashlib.sha256(mailbox.lower().encode()).hexdigest()[:16]
        while True:
            with self._lock:
                for n in range(PER_MAILBOX_LIMIT):
                    slot = (key, n)
                    if slot in self._taken:
                        continue  # one of our own threads has it
                    fd = self._fds.get(slot)
                    if fd is None:
                        path = os.path.join(self.lock_dir or "", f"slot-{key}-{n}.lock")
                        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                        fd = self._fds[slot] = os.open(path, flags, 0o660)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another process has it
                    self._taken.add(slot)
                    return slot
            time.sleep(SLOT_POLL)  # all four taken by other processes
