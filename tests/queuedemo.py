"""Test helpers for mssendmail-queue: messages in every state, made by the real code paths.

Submission writes into maildrop/, pickup copies into queue/, and the
worker's own claim + outcome functions move messages to deferred/, dead/
or sent/, so the tests look at exactly the files a worker would leave.

Run as a script it builds the demo spool that docs/operations.md
shows: ``python -m tests.queuedemo CONFIG``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from mssendmail.delivery import outcome
from mssendmail.delivery.pickup import pickup
from mssendmail.spool import meta
from mssendmail.spool.claim import claim
from mssendmail.spool.layout import QUEUE, Spool
from mssendmail.submission.writer import Submission, make_envelope


def submit(
    spool: Spool,
    n: int = 1,
    rcpts: list[str] | None = None,
    sender: str = "app@example.com",
    subject: str = "report",
    body: bytes = b"hello\n",
) -> list[str]:
    rcpts = rcpts or ["alice@example.com"]
    ids = []
    for i in range(n):
        with Submission(spool, 1 << 24) as sub:
            head = f"From: {sender}\nTo: {', '.join(rcpts)}\nSubject: {subject} {i}\n\n"
            sub.write(head.encode() + body)
            ids.append(sub.commit(make_envelope(sender, rcpts)))
    return ids


def queued(spool: Spool, n: int = 1, **kwargs: Any) -> list[str]:
    """Messages picked up into queue/, due now."""
    ids = submit(spool, n, **kwargs)
    pickup(spool, 1 << 24)
    return ids


def _error(code: str, status: int, message: str, now: float) -> dict[str, Any]:
    return {
        "time": now,
        "class": "temporary",
        "status": status,
        "code": code,
        "message": message,
        "request_id": "req-1",
    }


def defer(
    spool: Spool,
    queue_id: str,
    until: float,
    attempts: int = 1,
    code: str = "ServiceUnavailable",
    status: int = 503,
    message: str = "Graph is busy",
    now: float | None = None,
) -> None:
    """What the worker leaves after `attempts` temporary failures."""
    now = time.time() if now is None else now
    held = claim(spool, queue_id, QUEUE)
    assert held is not None
    state = meta.read(spool, queue_id)
    state["attempts"] = attempts
    state["last_error"] = _error(code, status, message, now)
    state["next_attempt"] = until
    meta.add_event(state, now, "deferred", f"{message}; status {status}; {code}")
    outcome.defer(spool, held, state, until)


def bury(
    spool: Spool,
    queue_id: str,
    code: str = "ErrorInvalidRecipients",
    status: int = 400,
    message: str = "At least one recipient is not valid.",
    attempts: int = 1,
    now: float | None = None,
) -> None:
    """What the worker leaves after a permanent failure."""
    now = time.time() if now is None else now
    held = claim(spool, queue_id, QUEUE)
    assert held is not None
    state = meta.read(spool, queue_id)
    state["attempts"] = attempts
    reason = {**_error(code, status, message, now), "class": "permanent"}
    reason["attempts"] = attempts
    reason["why"] = "permanent failure"
    state["last_error"] = reason
    meta.add_event(state, now, "dead", f"{message}; status {status}; {code}")
    outcome.bury(spool, held, state, reason)


def sent(spool: Spool, queue_id: str, now: float | None = None) -> None:
    """What the worker leaves after a delivery."""
    now = time.time() if now is None else now
    held = claim(spool, queue_id, QUEUE)
    assert held is not None
    info = {
        "id": queue_id,
        "message_id": f"<{queue_id}.mssendmail@example.com>",
        "mailbox": "relay@example.com",
        "rcpts": 1,
        "size": 321,
        "sent": now,
        "attempts": 1,
        "request_id": "0d1c6f5e-demo",
        "sender": "app@example.com",
        "recipients": ["alice@example.com"],
        "uid": os.getuid(),
        "submitted": now - 1,
    }
    outcome.sent(spool, held, info)


def demo(spool: Spool) -> dict[str, list[str]]:
    """A spool with a few sent, queued, deferred, held and dead messages."""
    now = time.time()
    ids: dict[str, list[str]] = {}
    ids["sent"] = queued(spool, 2, rcpts=["alice@example.com"], subject="nightly backup ok")
    for qid in ids["sent"]:
        sent(spool, qid)
    ids["deferred"] = queued(spool, 1, rcpts=["ops@example.com", "dba@example.com"])
    defer(spool, ids["deferred"][0], now + 540, attempts=3, code="ServiceUnavailable")
    ids["dead"] = queued(spool, 1, sender="cron@example.com", rcpts=["nobody@invalid"])
    bury(spool, ids["dead"][0])
    ids["queued"] = queued(
        spool, 1, rcpts=[f"team{i}@example.com" for i in range(6)], subject="weekly"
    )
    return ids


if __name__ == "__main__":
    from mssendmail.config import load

    cfg = load(sys.argv[1])
    made = demo(Spool(cfg.queue_dir))
    print(Path(cfg.queue_dir), made)
