"""Spool primitives: init modes, atomic writes, and the sweep of abandoned temp files."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import time

from mssendmail.spool.layout import (
    DIR_MODES,
    META,
    QUEUE,
    SENT,
    Spool,
    init_tree,
    sweep_temps,
    write_atomic,
)


def test_init_is_idempotent_and_repairs_modes(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "q")
    assert init_tree(root)
    assert init_tree(root) == []
    os.chmod(os.path.join(root, QUEUE), 0o777)
    assert init_tree(root) == [f"chmod 2770 {root}/{QUEUE}"]
    for area, mode in DIR_MODES.items():
        assert stat.S_IMODE(os.stat(os.path.join(root, area)).st_mode) == mode
    assert stat.S_ISFIFO(os.stat(os.path.join(root, "trigger")).st_mode)


def test_write_atomic_replaces_whole_file(spool: Spool) -> None:
    path = spool.path(META, "x.json")
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    with open(path, "rb") as fh:
        assert fh.read() == b"two"
    assert os.listdir(spool.dir(META)) == ["x.json"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_what_dead_writers_left(spool: Spool) -> None:
    me = os.getpid()
    dead = dead_pid()
    live_locked = spool.path(QUEUE, f"tmp.aaaa.{me}.00000001")
    fd = os.open(live_locked, os.O_WRONLY | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"half")
    written_unlocked = spool.path(SENT, f"tmp.bbbb.json.{me}.00000002")
    with open(written_unlocked, "wb") as fh:
        fh.write(b"{")
    empty_dead = spool.path(META, f"tmp.cccc.json.{dead}.00000003")
    open(empty_dead, "wb").close()
    empty_live = spool.path(META, f"tmp.dddd.json.{me}.00000004")
    open(empty_live, "wb").close()
    not_temp = spool.path(QUEUE, "0" * 18)
    open(not_temp, "wb").close()
    removed = sweep_temps(spool, time.time())
    assert sorted(removed) == sorted(
        [f"{SENT}/tmp.bbbb.json.{me}.00000002", f"{META}/tmp.cccc.json.{dead}.00000003"]
    )
    assert os.path.exists(live_locked) and os.path.exists(empty_live)
    assert os.path.exists(not_temp)
    # past the grace period even an empty file of a live pid is abandoned
    assert sweep_temps(spool, time.time() + 3600) == [f"{META}/tmp.dddd.json.{me}.00000004"]
    os.close(fd)
