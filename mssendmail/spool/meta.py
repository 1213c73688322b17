"""Per-message state beside the message: attempts, history and the last error.

``meta/<id>.json`` exists only once something happened to a message (a
failed attempt, a hold); a message without one has never been tried. It is
written atomically, so a crash leaves the old or the new version.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mssendmail.spool.layout import META, Spool, unlink_quiet, write_atomic

HISTORY_LIMIT = 50


def read(spool: Spool, queue_id: str) -> dict[str, Any]:
    return read_json(spool.meta_path(queue_id))


def write(spool: Spool, queue_id: str, meta: dict[str, Any]) -> None:
    write_atomic(spool.meta_path(queue_id), json.dumps(meta, sort_keys=True).encode())


def remove(spool: Spool, queue_id: str) -> None:
    unlink_quiet(spool.meta_path(queue_id))


def add_event(meta: dict[str, Any], when: float, event: str, detail: str = "") -> None:
    """Append to the state history, keeping the newest HISTORY_LIMIT entries."""
    history = meta.setdefault("history", [])
    history.append({"time": round(when, 3), "event": event, "detail": detail})
    del history[:-HISTORY_LIMIT]


def attempts(meta: dict[str, Any]) -> int:
    value = meta.get("attempts", 0)
    return value if isinstance(value, int) else 0


def read_json(path: str) -> dict[str, Any]:
    """A small JSON object from the spool, or {} when missing or unreadable."""
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def exists(spool: Spool, queue_id: str) -> bool:
    return os.path.exists(spool.meta_path(queue_id))


def orphans(spool: Spool) -> list[str]:
    """Ids with a meta/ record but no message left in any state, and a sent record.

    A worker killed between the sent record's rename and the meta/ removal
    leaves one; nothing would ever read or remove it otherwise.
    """
    try:
        names = os.listdir(spool.dir(META))
    except OSError:
        return []
    ids = [name[: -len(".json")] for name in names if name.endswith(".json")]
    return [qid for qid in ids if spool.locate(qid) is None and spool.is_sent(qid)]
