"""CORRUPT_RETENTION: housekeeping removes quarantined entries, and their reasons, past it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mssendmail.config import Config
from mssendmail.delivery.housekeeping import SWEEP_INTERVAL, Housekeeping
from mssendmail.delivery.pickup import pickup
from mssendmail.errors import ConfigError
from mssendmail.spool.layout import CORRUPT, MAILDROP, Spool, new_id


def quarantine_one(spool: Spool, body: bytes) -> str:
    Path(spool.path(MAILDROP, new_id())).write_bytes(body)
    before = set(os.listdir(spool.dir(CORRUPT)))
    assert pickup(spool, 1 << 20) == []
    [entry] = [n for n in set(os.listdir(spool.dir(CORRUPT))) - before if "." not in n]
    return entry


def test_entries_older_than_the_retention_go_with_their_reasons(spool: Spool) -> None:
    old = quarantine_one(spool, b"old junk")
    # Set the mtime far into the future: the age must come from the quarantine
    # itself (ctime), not from a time the submitter could choose.
    future = time.time() + 10**6
    os.utime(spool.path(CORRUPT, old), (future, future))
    time.sleep(0.05)
    young = quarantine_one(spool, b"young junk")
    ctime = {n: os.lstat(spool.path(CORRUPT, n)).st_ctime for n in (old, young)}
    assert ctime[young] > ctime[old]
    keep = 3600.0
    now = ctime[old] + keep + (ctime[young] - ctime[old]) / 2
    cfg = Config({"QUEUE_DIR": spool.root, "CORRUPT_RETENTION": "1h"})
    Housekeeping(spool, cfg).expire_sent(max(now, SWEEP_INTERVAL))
    assert sorted(os.listdir(spool.dir(CORRUPT))) == [young, f"{young}.reason.json"]


def test_the_default_is_seven_days_in_the_duration_syntax() -> None:
    assert Config({}).seconds("CORRUPT_RETENTION") == 7 * 86400
    assert Config({"CORRUPT_RETENTION": "2h"}).seconds("CORRUPT_RETENTION") == 7200
    with pytest.raises(ConfigError):
        Config({"CORRUPT_RETENTION": "soon"}).seconds("CORRUPT_RETENTION")
