"""Per-mailbox state shared by every worker process: the daily recipient budget and pacing.

Exchange Online lets a mailbox send to 10,000 recipients in a rolling 24
hours; past that it cannot send for a day, and Graph still answers 202.
This module counts, per mailbox, the recipients handed to Graph, in
one-minute buckets over the last 24 hours, in ``state/budget-<key>.json``;
``state/pace-<key>.json`` holds the next free send slot for MAILBOX_RATE.
Each file is changed only under an flock on its ``.lock`` file, so the
service and an admin's --once agree.

The files are replaced by temp file + rename, without fsync: they survive
kill -9 (the page cache stays), and a power cut may forget the last few
seconds of counts, which errs toward sending a little more, never toward
losing mail. A damaged file counts as empty.

FILES: QUEUE_DIR/state/budget-*.json, pace-*.json and their .lock files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mssendmail.spool.layout import STATE, Spool, unlink_quiet

WINDOW = 86400.0
BUCKET = 60.0
WARN_AT = 0.8


@dataclass
class Verdict:
    ok: bool
    used: int  # recipients in the window, after this reservation when ok
    limit: int
    until: float = 0.0  # when not ok: when the window will have room


def key(mailbox: str) -> str:
    return hashlib.sha256(mailbox.lower().encode()).hexdigest()[:16]


@contextmanager
def locked(spool: Spool, name: str) -> Iterator[str]:
    """flock state/<name>.lock; yields the path of state/<name>.json."""
    lock = spool.path(STATE, f"{name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield spool.path(STATE, f"{name}.json")
    finally:
        os.close(fd)


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def store(path: str, doc: dict[str, Any]) -> None:
    """Replace path; callers hold its lock, so one fixed temp name suffices and a
    killed writer's leftover is simply overwritten by the next store."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        unlink_quiet(tmp)
        raise


def _buckets(doc: dict[str, Any], now: float) -> dict[int, int]:
    """Minute -> recipients, the window's only (older buckets are dropped)."""
    raw = doc.get("buckets")
    first = int((now - WINDOW) // BUCKET) + 1
    out: dict[int, int] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            valid = isinstance(k, str) and k.isdigit() and isinstance(v, int) and v > 0
            if valid and int(k) >= first:
                out[int(k)] = v
    return out


def _until(buckets: dict[int, int], need: int, limit: int) -> float:
    """When enough of the window has expired for `need` more recipients."""
    used = sum(buckets.values())
    freed = 0
    for minute in sorted(buckets):
        freed += buckets[minute]
        if used - freed + need <= limit or used - freed == 0:
            return (minute + 1) * BUCKET + WINDOW
    return max(buckets, default=0) * BUCKET + BUCKET + WINDOW


def reserve(spool: Spool, mailbox: str, count: int, limit: int, now: float) -> Verdict:
    """Count `count` recipients for mailbox if the rolling window has room.

    A message with more recipients than the whole limit goes when the
    window is empty (it could never go otherwise).
    """
    with locked(spool, f"budget-{key(mailbox)}") as path:
        buckets = _buckets(load(path), now)
        used = sum(buckets.values())
        if used + count > limit and used > 0:
            return Verdict(False, used, limit, _until(buckets, count, limit))
        minute = int(now // BUCKET)
        buckets[minute] = buckets.get(minute, 0) + count
        doc = {
            "mailbox": mailbox.lower(),
            "limit": limit,
            "buckets": {str(m): n for m, n in buckets.items()},
        }
        store(path, doc)
        return Verdict(True, used + count, limit)


def refund(spool: Spool, mailbox: str, count: int, now: float) -> None:
    """Give back recipients that Graph certainly did not take (a refused send)."""
    with locked(spool, f"budget-{key(mailbox)}") as path:
        doc = load(path)
        buckets = _buckets(doc, now)
        for minute in sorted(buckets, reverse=True):
            take = min(count, buckets[minute])
            buckets[minute] -= take
            count -= take
            if count <= 0:
                break
        doc["buckets"] = {str(m): n for m, n in buckets.items() if n > 0}
        store(path, doc)


def usage(spool: Spool, now: float) -> dict[str, tuple[int, int]]:
    """mailbox -> (recipients in the last 24 h, the limit last applied)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        names = os.listdir(spool.dir(STATE))
    except OSError:
        return out
    for name in sorted(names):
        if not (name.startswith("budget-") and name.endswith(".json")):
            continue
        doc = load(spool.path(STATE, name))
        mailbox, limit = doc.get("mailbox"), doc.get("limit")
        if isinstance(mailbox, str) and isinstance(limit, int):
            out[mailbox] = (sum(_buckets(doc, now).values()), limit)
    return out


def pace_slot(spool: Spool, mailbox: str, interval: float, now: float) -> float:
    """Take the next send slot for mailbox (one per `interval` seconds); its time."""
    with locked(spool, f"pace-{key(mailbox)}") as path:
        doc = load(path)
        nxt = doc.get("next")
        slot = max(now, float(nxt)) if isinstance(nxt, (int, float)) else now
        if slot > now + WINDOW:
            slot = now  # a clock that jumped back must not stop the mailbox for days
        store(path, {"mailbox": mailbox.lower(), "next": slot + interval})
        return slot
