"""No local user can stop delivery for the others: real users, a real worker (root only).

The worker runs as the mssendmail user, as the shipped unit runs it; the
attacker (mssendmail-t1) and the victim (mssendmail-t2) are ordinary users
without any group membership. See tests/test_multiuser.py for the setup.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mssendmail.spool.layout import CORRUPT, MAILDROP, SERVICE_USER, init_tree, is_id, new_id
from tests.test_multiuser import (
    ROOT,
    USERS,
    as_user,
    ensure_user,
    probe,
    python_for,
    sendmail_cmd,
)

pytestmark = pytest.mark.root


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    service = ensure_user(SERVICE_USER, system=True)
    users = [ensure_user(name) for name in USERS]
    base = tempfile.mkdtemp(prefix="mssendmail-availability-")
    os.chmod(base, 0o755)
    try:
        spool = os.path.join(base, "queue")
        init_tree(spool)
        outbox = os.path.join(base, "outbox")
        os.mkdir(outbox, 0o750)
        os.chown(outbox, service.pw_uid, service.pw_gid)
        cfg = os.path.join(base, "mssendmail.env")
        Path(cfg).write_text(
            f"QUEUE_DIR={spool}\nTRANSPORT=file\nOUTBOX_DIR={outbox}\n"
            "SENDER=relay@example.com\nRETRY_MIN=1s\nRETRY_MAX=2s\nWORKER_CPU=all\n"
        )
        os.chown(cfg, 0, grp.getgrnam(SERVICE_USER).gr_gid)
        os.chmod(cfg, 0o640)
        env = {"PATH": "/usr/bin:/bin", "MSSENDMAIL_CONFIG": cfg, "QUEUE_DIR": spool}
        yield {
            "spool": spool,
            "outbox": outbox,
            "env": env,
            "python": python_for(users[0]),
            "service": service,
            "t1": users[0],
            "t2": users[1],
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def worker_cmd(world: dict[str, Any], *args: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r});"
        " from mssendmail.delivery.worker import main; sys.exit(main(sys.argv[1:]))"
    )
    return [*world["python"], code, *args]


def queue_cmd(world: dict[str, Any]) -> list[str]:
    return [
        *world["python"],
        f"import sys; sys.path.insert(0, {ROOT!r}); from mssendmail.admin.cli import main;"
        " sys.exit(main(sys.argv[1:]))",
    ]


def submit(world: dict[str, Any], who: str, marker: str) -> None:
    proc = as_user(
        world[who],
        [*sendmail_cmd(world["python"]), "-i", "bob@example.com"],
        world["env"],
        f"Subject: {marker}\n\n{marker}\n".encode(),
    )
    assert proc.returncode == 0, proc.stderr


def delivered(world: dict[str, Any], marker: str) -> bool:
    for name in os.listdir(world["outbox"]):
        try:
            if marker.encode() in Path(world["outbox"], name).read_bytes():
                return True
        except OSError:
            continue
    return False


def plant_traps(world: dict[str, Any]) -> list[str]:
    """As t1: every kind of entry that stopped or slowed pickup on 3981602."""
    md = os.path.join(world["spool"], MAILDROP)
    dirs = ["0", new_id(), "tmp.trap", "ffffffffffffffffff"]
    code = "\n".join(
        [
            *(f"t('mkdir {d}', lambda: os.mkdir({os.path.join(md, d)!r}))" for d in dirs),
            f"t('nested', lambda: open({os.path.join(md, dirs[1], 'x')!r}, 'w').close())",
            f"t('fifo', lambda: os.mkfifo({os.path.join(md, new_id())!r}))",
            f"t('unreadable', lambda: os.close(os.open({os.path.join(md, new_id())!r},"
            " os.O_CREAT | os.O_WRONLY, 0)))",
            f"t('bad name', lambda: open({os.path.join(md, 'bad name')!r}, 'w').close())",
        ]
    )
    result = probe(world, "t1", code)
    assert set(result.values()) == {"ok"}, result
    return dirs


def test_once_terminates_and_delivers_past_every_trap(world: dict[str, Any]) -> None:
    dirs = plant_traps(world)
    submit(world, "t2", "victim-once")
    started = time.monotonic()
    proc = as_user(world["service"], worker_cmd(world, "--once"), world["env"])
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 30, elapsed
    assert delivered(world, "victim-once")
    log = proc.stderr.decode()
    assert "pickup-stalled" not in log and "Traceback" not in log
    assert log.count("event=maildrop-skipped") == len(dirs)
    # what could be moved is in corrupt/; the directories are left for the admin
    left = sorted(os.listdir(os.path.join(world["spool"], MAILDROP)))
    assert left == sorted(dirs)
    assert len([n for n in os.listdir(os.path.join(world["spool"], CORRUPT))]) == 2 * 3


def test_service_worker_delivers_within_5s_and_admin_purges_the_traps(
    world: dict[str, Any],
) -> None:
    dirs = plant_traps(world)
    worker = subprocess.Popen(
        worker_cmd(world),
        env=world["env"],
        cwd="/",
        user=world["service"].pw_uid,
        group=world["service"].pw_gid,
        extra_groups=[],
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.5)  # the traps are seen and skipped
        submit(world, "t2", "victim-service")
        submitted = time.monotonic()
        while not delivered(world, "victim-service"):
            assert time.monotonic() - submitted < 5, "not delivered within 5 s"
            assert worker.poll() is None
            time.sleep(0.05)
        time.sleep(2.5)  # more rounds: the skipped entries must not be logged again
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=10)
    assert worker.returncode == 0
    log = err.decode()
    assert log.count("event=maildrop-skipped") == len(dirs), log
    assert "pickup-stalled" not in log and "Traceback" not in log
    fds_note = [line for line in log.splitlines() if "EMFILE" in line or "Too many" in line]
    assert not fds_note

    queue = queue_cmd(world)
    dry = subprocess.run(
        [*queue, "purge-maildrop", "--dry-run"], env=world["env"], capture_output=True
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.decode().count("directory") == len(dirs)
    done = subprocess.run([*queue, "purge-maildrop"], env=world["env"], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert os.listdir(os.path.join(world["spool"], MAILDROP)) == []


def as_who(world: dict[str, Any], who: str) -> dict[str, Any]:
    """subprocess arguments that run a child as one of the world's users, and nothing more."""
    user = world[who]
    return {
        "env": world["env"],
        "cwd": "/",
        "user": user.pw_uid,
        "group": user.pw_gid,
        "extra_groups": [],
    }


def talk_as(
    world: dict[str, Any], who: str, code: str, text: bool = False
) -> subprocess.Popen[Any]:
    """Python code running as a user, which the test drives through its stdin and stdout."""
    return subprocess.Popen(
        [*world["python"], code],
        **as_who(world, who),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=text,
    )


def test_root_deletes_a_record_its_owner_keeps_locked(world: dict[str, Any]) -> None:
    """t1 names a valid record 000000000000000000 and holds its flock for ever (issue 12.4)."""
    md = os.path.join(world["spool"], MAILDROP)
    zero = os.path.join(md, "000000000000000000")
    code = (
        f"import fcntl, os, sys; sys.path.insert(0, {ROOT!r})\n"
        "from mssendmail.spool.layout import Spool\n"
        "from mssendmail.submission.writer import Submission, make_envelope\n"
        f"spool = Spool({world['spool']!r})\n"
        "with Submission(spool, 1 << 20) as sub:\n"
        "    sub.write(b'Subject: locked\\n\\nlocked\\n')\n"
        "    qid = sub.commit(make_envelope('', ['bob@example.com']))\n"
        f"os.rename(spool.path('maildrop', qid), {zero!r})\n"
        f"fd = os.open({zero!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = talk_as(world, "t1", code)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert os.stat(zero).st_uid == world["t1"].pw_uid
        started = time.monotonic()
        done = subprocess.run(
            [*queue_cmd(world), "delete", "--yes", "000000000000000000"],
            env=world["env"],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 10
        assert b"deleted" in done.stdout and done.stderr == b""
        assert not os.path.lexists(zero)
        # the worker never queues what was deleted, lock or no lock
        proc = as_user(world["service"], worker_cmd(world, "--once"), world["env"])
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(world["outbox"]) == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


FLOOD = 10_000


def plant_flood(world: dict[str, Any], count: int = FLOOD) -> None:
    """As t1, one process: `count` valid submissions through the submission writer."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "from mssendmail.spool.layout import Spool\n"
        "from mssendmail.submission.writer import Submission, make_envelope\n"
        f"spool = Spool({world['spool']!r})\n"
        f"for i in range({count}):\n"
        "    with Submission(spool, 1 << 20) as sub:\n"
        "        sub.write(b'Subject: flood %d\\n\\nflood\\n' % i)\n"
        "        sub.commit(make_envelope('', ['bob@example.com']))\n"
    )
    proc = subprocess.run(
        [*world["python"], code],
        **as_who(world, "t1"),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    md = os.path.join(world["spool"], MAILDROP)
    owners = [os.lstat(os.path.join(md, n)).st_uid for n in os.listdir(md) if is_id(n)]
    assert owners.count(world["t1"].pw_uid) >= count


class Outbox:
    """Reads each outbox file once: with the flood there are thousands."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.path = world["outbox"]
        self.seen: set[str] = set()
        self.found: set[str] = set()

    def scan(self) -> None:
        for name in set(os.listdir(self.path)) - self.seen:
            try:
                data = Path(self.path, name).read_bytes()
            except OSError:
                continue  # not complete yet: read it next time
            self.seen.add(name)
            self.found.update(m for m in ("victim-service", "victim-once") if m.encode() in data)

    def wait(self, marker: str, since: float, proc: Any) -> float:
        """Seconds from `since` until `marker` is in the outbox; fails after 5 s."""
        while self.scan() or marker not in self.found:
            assert time.monotonic() - since < 5, f"{marker} not delivered within 5 s"
            assert proc.poll() is None, "the worker ended first"
            time.sleep(0.02)
        return time.monotonic() - since


def start_worker(world: dict[str, Any], log: Any, *args: str) -> subprocess.Popen[bytes]:
    """The worker as the service user; its log goes to a file, not a pipe: a line per
    sent message would fill a pipe that nobody reads yet, and block the worker."""
    return subprocess.Popen(
        worker_cmd(world, *args),
        **as_who(world, "service"),
        stderr=log,
    )


@pytest.mark.slow
def test_traps_and_a_10000_flood_by_one_user_delay_another_by_under_5s(
    world: dict[str, Any],
) -> None:
    """The Done-when of issue 12: directory, FIFO, unmovable entry and 10,000 messages by t1."""
    with open(world["env"]["MSSENDMAIL_CONFIG"], "a") as cfg:
        cfg.write("DAILY_RECIPIENT_LIMIT=100000\n")  # the default would hold the last few back
    plant_traps(world)
    plant_flood(world)
    outbox = Outbox(world)

    with tempfile.TemporaryFile() as log:
        worker = start_worker(world, log)
        try:
            time.sleep(1.5)  # the flood is being picked up and sent
            submit(world, "t2", "victim-service")
            outbox.wait("victim-service", time.monotonic(), worker)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        log.seek(0)
        err = log.read().decode()
    assert worker.returncode == 0
    assert "Traceback" not in err and "pickup-stalled" not in err
    assert len(os.listdir(world["outbox"])) < FLOOD // 2, "too little flood left for --once"

    submit(world, "t2", "victim-once")
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        once = start_worker(world, log, "--once")
        try:
            outbox.wait("victim-once", started, once)
            once.wait(timeout=120)  # the rest of the flood, then it exits
        finally:
            if once.poll() is None:
                once.kill()
                once.wait()
        log.seek(0)
        err = log.read().decode()
    assert once.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert len(os.listdir(world["outbox"])) == FLOOD + 2


def test_a_quarantined_file_is_out_of_its_submitters_reach(world: dict[str, Any]) -> None:
    """t1 plants garbage, keeps it open for writing, and writes on after the quarantine."""
    planted = os.path.join(world["spool"], MAILDROP, new_id())
    code = (
        "import os, sys\n"
        f"fd = os.open({planted!r}, os.O_WRONLY | os.O_CREAT, 0o640)\n"
        "os.write(fd, b'junk' * 100)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "os.write(fd, b'MORE' * 1000)\n"
        "print(os.fstat(fd).st_size, flush=True)\n"
    )
    writer = talk_as(world, "t1", code, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        proc = as_user(world["service"], worker_cmd(world, "--once"), world["env"])
        assert proc.returncode == 0, proc.stderr
        out, _ = writer.communicate("go\n", timeout=30)
    finally:
        writer.kill()
    assert int(out) == 4400  # its writes went on, into its own inode
    corrupt = os.path.join(world["spool"], CORRUPT)
    [entry] = [n for n in os.listdir(corrupt) if not n.endswith(".reason.json")]
    st = os.stat(os.path.join(corrupt, entry))
    assert st.st_uid == world["service"].pw_uid  # the worker's copy, not t1's file
    assert Path(corrupt, entry).read_bytes() == b"junk" * 100
    assert not os.path.exists(planted)
    probed = probe(
        world, "t1", f"t('append', lambda: open({os.path.join(corrupt, entry)!r}, 'ab'))"
    )
    assert probed == {"append": "PermissionError"}
