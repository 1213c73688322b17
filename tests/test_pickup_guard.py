"""Pickup can never be stopped by one maildrop/ entry (issue 12, finding 1).

As root every rename succeeds, so the directory case (EACCES when the worker
is not the directory's owner) is simulated here by a failing os.rename; the
real thing, with unprivileged users, is in tests/test_multiuser_availability.py.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mssendmail.delivery import pickup as pickup_mod
from mssendmail.delivery.pickup import pickup
from mssendmail.delivery.skips import SkipList, Stalled
from mssendmail.spool.layout import CORRUPT, MAILDROP, QUEUE, Spool, new_id
from mssendmail.submission.writer import Submission, make_envelope

MAX = 1 << 20


def submit(spool: Spool, body: bytes = b"Subject: t\n\nhello\n") -> str:
    with Submission(spool, MAX) as sub:
        sub.write(body)
        return sub.commit(make_envelope("s@example.com", ["a@example.com"]))


def refuse_directory_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the mssendmail user gets for a submitter's directory: EACCES."""
    real = os.rename

    def rename(src: Any, dst: Any) -> None:
        if stat.S_ISDIR(os.lstat(src).st_mode):
            raise PermissionError(errno.EACCES, "Permission denied", src)
        real(src, dst)

    monkeypatch.setattr(pickup_mod.os, "rename", rename)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def temps(spool: Spool) -> list[str]:
    return [n for n in os.listdir(spool.dir(QUEUE)) if n.startswith("tmp.")]


def test_unmovable_directory_is_skipped_logged_once_and_mail_behind_it_queued(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_directory_renames(monkeypatch)
    first = submit(spool)
    os.mkdir(spool.path(MAILDROP, "0"))  # not an id
    os.mkdir(spool.path(MAILDROP, "f" * 18))  # an id that sorts after real mail
    os.mkdir(spool.path(MAILDROP, "tmp.x"))  # a temp name
    skips = SkipList()
    with caplog.at_level(logging.WARNING, "mssendmail"):
        assert pickup(spool, MAX, skips=skips) == [first]
        second = submit(spool)
        for _ in range(5):
            queued = pickup(spool, MAX, skips=skips)
            if queued:
                assert queued == [second]
    assert spool.ids(QUEUE) == sorted([first, second])
    skipped = [r.getMessage() for r in caplog.records if "maildrop-skipped" in r.getMessage()]
    assert len(skipped) == 3, skipped  # once per entry, not once per round
    assert all("purge-maildrop" in line for line in skipped)
    assert temps(spool) == []


def test_a_replaced_entry_is_looked_at_again(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_directory_renames(monkeypatch)
    name = new_id()
    os.mkdir(spool.path(MAILDROP, name))
    skips = SkipList()
    assert pickup(spool, MAX, skips=skips) == []
    assert len(skips) == 1
    os.rmdir(spool.path(MAILDROP, name))
    qid = submit(spool)
    assert pickup(spool, MAX, skips=skips) == [qid]


@pytest.mark.slow  # 1,000 rounds: a reliability suite, run once in CI
def test_fds_and_temp_copies_stay_flat_over_1000_rounds(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_directory_renames(monkeypatch)
    os.mkdir(spool.path(MAILDROP, "f" * 18))  # sorts after every real message
    os.mkfifo(spool.path(MAILDROP, "e" * 18))
    # An earlier test's unreachable objects may close their fds mid-loop: collect
    # them first, and count growth only (a leak adds fds every round).
    gc.collect()
    before = open_fds()
    for n in range(1000):
        qid = submit(spool)
        Path(spool.path(MAILDROP, new_id())).write_bytes(b"garbage")  # quarantined each round
        # A fresh skip list each round: the failing move is tried every time.
        assert pickup(spool, MAX, skips=SkipList()) == [qid], n
        if n % 100 == 0:
            assert open_fds() <= before, n
            assert temps(spool) == []
    assert open_fds() <= before
    assert temps(spool) == []
    assert len(spool.ids(QUEUE)) == 1000


def test_an_unexpected_error_on_one_entry_skips_it_and_not_the_others(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(submit(spool) for _ in range(3))
    real: Callable[..., Any] = pickup_mod.ingest

    def ingest(spool_: Spool, name: str, max_size: int) -> Any:
        if name == ids[1]:
            raise RecursionError("a bug")
        return real(spool_, name, max_size)

    monkeypatch.setattr(pickup_mod, "ingest", ingest)
    before = open_fds()
    skips = SkipList()
    assert pickup(spool, MAX, skips=skips) == [ids[0], ids[2]]
    assert open_fds() == before
    assert pickup(spool, MAX, skips=skips) == []  # remembered, not retried
    assert os.path.exists(spool.path(MAILDROP, ids[1]))  # kept for the admin


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC])
def test_resource_errors_stall_and_never_quarantine(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    ids = sorted(submit(spool) for _ in range(3))
    real = os.open
    calls = {"n": 0}

    def short_open(path: Any, flags: int, *args: Any) -> int:
        if str(path).startswith(spool.dir(MAILDROP)):
            calls["n"] += 1
            if calls["n"] >= 2:  # the first entry gets through
                raise OSError(code, os.strerror(code), path)
        return real(path, flags, *args)

    monkeypatch.setattr(pickup_mod.os, "open", short_open)
    before = open_fds()
    with pytest.raises(Stalled) as info:
        pickup(spool, MAX)
    assert info.value.queued == [ids[0]]
    assert open_fds() == before
    assert os.listdir(spool.dir(CORRUPT)) == []
    assert temps(spool) == []
    monkeypatch.setattr(pickup_mod.os, "open", real)
    assert pickup(spool, MAX) == ids[1:]


def test_disk_full_while_copying_stalls_and_keeps_the_original(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    qid = submit(spool)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mssendmail.spool.record.os.write", full)
    with pytest.raises(Stalled):
        pickup(spool, MAX)
    monkeypatch.undo()
    assert os.path.exists(spool.path(MAILDROP, qid))
    assert os.listdir(spool.dir(CORRUPT)) == [] and temps(spool) == []
    assert pickup(spool, MAX) == [qid]
