"""The worker's heartbeat: state/heartbeat.json, rewritten every loop.

`mssendmail-queue check` and `stats` read it to tell whether a worker is
alive, in which mode, and how busy. Not fsynced: a lost heartbeat is
harmless, the next loop writes another.
"""

from __future__ import annotations

import json
import os

from mssendmail import __version__
from mssendmail.spool.layout import HEARTBEAT_FILE, Spool, write_unsynced


def beat(spool: Spool, now: float, once: bool, inflight: int, **extra: object) -> None:
    """Record that this worker is alive at `now`; never fails the caller."""
    data = {
        "pid": os.getpid(),
        "time": now,
        "mode": "once" if once else "service",
        "version": __version__,
        "inflight": inflight,
        **extra,
    }
    try:
        write_unsynced(spool.state_path(HEARTBEAT_FILE), json.dumps(data).encode())
    except OSError:
        pass  # a full disk or a read-only spool: check will say the heartbeat is old
