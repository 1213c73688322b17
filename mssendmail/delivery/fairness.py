"""Fair share between submitting users: round-robin by the submitter's uid.

One user planted 10,000 valid records in maildrop/ in 4.9 s; another user's
next message waited behind 7,998 of them, because pickup and dispatch went
strictly oldest first. Now both go round-robin across uids, each uid's own
mail oldest first, so one user's backlog delays another's message by at
most a few sends.

Which uid: at pickup the worker trusts the maildrop file's owner (fstat of
the fd it copies from; see pickup.py), and pickup reports it. A message the
worker did not pick up itself (after a restart, or deferred) is looked up in
its queue file's envelope, whose uid pickup wrote. The listing of maildrop/
is ordered by lstat owner; that is only an order, the trust comes at fstat.

MAX_QUEUED_PER_USER (optional): a uid with that many messages in the
worker's queue gets no more picked up; the rest waits in maildrop/. The
uids at the cap are published in QUEUE_DIR/over-cap (mode 0644, one uid a
line), where submission looks its own uid up and exits 75.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator

from mssendmail.spool import record
from mssendmail.spool.layout import MAILDROP, Spool

UNKNOWN = -1  # a message whose uid cannot be read: one more "user"

Item = tuple[str, str]  # (queue id, area)


def interleave(groups: Iterable[list[str]]) -> Iterator[str]:
    """Round-robin over the groups, each group's order kept."""
    queues = collections.deque(collections.deque(g) for g in groups if g)
    while queues:
        group = queues.popleft()
        yield group.popleft()
        if group:
            queues.append(group)


def owners(spool: Spool, names: Iterable[str]) -> dict[int, list[str]]:
    """maildrop/ names grouped by owner uid (lstat), each group in the given order."""
    groups: dict[int, list[str]] = {}
    for name in names:
        try:
            uid = os.lstat(spool.path(MAILDROP, name)).st_uid
        except OSError:
            continue
        groups.setdefault(uid, []).append(name)
    return groups


def envelope_uid(path: str) -> int:
    """The uid pickup wrote into a queue file's envelope, or UNKNOWN."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < record.FOOTER_LEN:
                return UNKNOWN
            tail = os.pread(fh.fileno(), record.FOOTER_LEN, size - record.FOOTER_LEN)
            message_len, envelope_len, _ = record.parse_footer(tail, size)
            env = record.parse_envelope(os.pread(fh.fileno(), envelope_len, message_len))
    except (OSError, record.CorruptRecord):
        return UNKNOWN
    uid = env.get("uid")
    return uid if isinstance(uid, int) and not isinstance(uid, bool) else UNKNOWN


class FairQueue:
    """The send list: one FIFO per uid, popped round-robin across uids."""

    def __init__(self) -> None:
        self._by_uid: dict[int, collections.deque[Item]] = {}
        self._turns: collections.deque[int] = collections.deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, item: Item, uid: int) -> None:
        queue = self._by_uid.get(uid)
        if queue is None:
            queue = self._by_uid[uid] = collections.deque()
            self._turns.append(uid)
        queue.append(item)
        self._len += 1

    def popleft(self) -> Item:
        uid = self._turns.popleft()
        queue = self._by_uid[uid]
        item = queue.popleft()
        self._len -= 1
        if queue:
            self._turns.append(uid)
        else:
            del self._by_uid[uid]
        return item


def publish_over_cap(spool: Spool, uids: Iterable[int]) -> None:
    """Tell submission which uids are at MAX_QUEUED_PER_USER (not fsynced: a hint)."""
    spool.publish_over_cap(sorted(set(uids)))
