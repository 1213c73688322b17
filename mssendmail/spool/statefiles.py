"""Small JSON files in state/ that the worker keeps for itself and for `check`.

- ``sentitems-lookup.json``: the last 403 of a Sent Items lookup (the worker
  writes it, `mssendmail-queue check` explains it, a lookup that works again
  removes it);
- ``cleanup-<id>.json``: a SENT_ITEMS=delete clean-up job (delivery/cleanup.py).

Each is written atomically (write_atomic), so a crash leaves the old or the
new version; a missing or unreadable one reads as {}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mssendmail.spool import meta
from mssendmail.spool.layout import (
    RECORD_SUFFIX,
    SENTITEMS_DENIED_FILE,
    STATE,
    Spool,
    is_id,
    unlink_quiet,
    write_atomic,
)

CLEANUP_PREFIX = "cleanup-"


def write_denied(spool: Spool, doc: dict[str, Any]) -> None:
    """Record a Sent Items lookup denial (OSError when it cannot be written)."""
    write_atomic(spool.state_path(SENTITEMS_DENIED_FILE), json.dumps(doc).encode())


def read_denied(spool: Spool) -> dict[str, Any]:
    return meta.read_json(spool.state_path(SENTITEMS_DENIED_FILE))


def forget_denied(spool: Spool, mailbox: str) -> None:
    """Remove the denial record if it is this mailbox's."""
    path = spool.state_path(SENTITEMS_DENIED_FILE)
    if os.path.exists(path) and meta.read_json(path).get("mailbox", "").lower() == mailbox.lower():
        unlink_quiet(path)


def _job_path(spool: Spool, queue_id: str) -> str:
    return spool.path(STATE, f"{CLEANUP_PREFIX}{queue_id}{RECORD_SUFFIX}")


def cleanup_jobs(spool: Spool) -> list[str]:
    """The queue ids with a clean-up job, sorted; [] when state/ cannot be read."""
    try:
        names = os.listdir(spool.dir(STATE))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(CLEANUP_PREFIX) and name.endswith(RECORD_SUFFIX):
            qid = name[len(CLEANUP_PREFIX) : -len(RECORD_SUFFIX)]
            if is_id(qid):
                out.append(qid)
    return sorted(out)


def read_cleanup_job(spool: Spool, queue_id: str) -> dict[str, Any]:
    return meta.read_json(_job_path(spool, queue_id))


def write_cleanup_job(spool: Spool, queue_id: str, job: dict[str, Any]) -> None:
    """Write a job durably (OSError when it cannot be written)."""
    write_atomic(_job_path(spool, queue_id), json.dumps(job, sort_keys=True).encode())


def remove_cleanup_job(spool: Spool, queue_id: str) -> None:
    unlink_quiet(_job_path(spool, queue_id))
