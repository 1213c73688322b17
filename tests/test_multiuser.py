"""The multi-user permission model, with real unprivileged users (root only).

Creates the users mssendmail-t1 and mssendmail-t2 (and the service user
mssendmail) with useradd when they are missing, builds a spool as root the
way `mssendmail-queue init` does, and runs the submission code as those users
(setuid/setgid in the child, no supplementary groups). Proves:

* any user can submit, with no group membership and an unreadable config;
* another user can neither list maildrop/, nor read, rename or delete a
  message that is not theirs, nor list the queue (mailq exits 77);
* the 0640 root:mssendmail secrets file stays unreadable to submitters;
* the service user can read what they submitted.

The interpreter is the venv's when the test users can execute it, otherwise
a system python3 >= 3.9 with this checkout on sys.path: submission needs
only the standard library.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mssendmail.spool import record
from mssendmail.spool.layout import MAILDROP, QUEUE, SERVICE_USER, init_tree
from tests.accounts import note_created

pytestmark = pytest.mark.root

ROOT = str(Path(__file__).resolve().parent.parent)
USERS = ("mssendmail-t1", "mssendmail-t2")
SECRET = "s3cr3t-value-that-must-not-leak"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create users and switch to them"
    if shutil.which("useradd") is None:
        return "useradd is not installed (apt-get install passwd)"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def ensure_user(name: str, system: bool = False) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", "/usr/sbin/nologin"]
        subprocess.run([*cmd, *(["--system"] if system else []), name], check=True)
        note_created(name, existed_before=False)
        return pwd.getpwnam(name)


def as_user(
    user: pwd.struct_passwd, argv: list[str], env: dict[str, str], data: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv,
        input=data,
        env=env,
        cwd="/",
        capture_output=True,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        timeout=60,
    )


def python_for(user: pwd.struct_passwd) -> list[str]:
    """An interpreter command the user can run that imports this checkout."""
    code = "import sys; assert sys.version_info >= (3, 9)"
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not exe:
            continue
        try:
            usable = as_user(user, [exe, "-c", code], {"PATH": "/usr/bin:/bin"}).returncode == 0
        except OSError:  # e.g. the venv lives under root's 0700 home
            usable = False
        if usable:
            return [exe, "-I", "-c"]
    pytest.skip(f"no Python >= 3.9 that {user.pw_name} may execute")


def sendmail_cmd(python: list[str], prog: str = "mssendmail") -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r});"
        " from mssendmail.submission.sendmail import main; "
        f"sys.exit(main([{prog!r}, *sys.argv[1:]]))"
    )
    return [*python, code]


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    service = ensure_user(SERVICE_USER, system=True)
    users = [ensure_user(name) for name in USERS]
    base = tempfile.mkdtemp(prefix="mssendmail-multiuser-")
    os.chmod(base, 0o755)  # pytest's tmp_path is 0700 root: others could not even traverse
    try:
        spool = os.path.join(base, "queue")
        init_tree(spool)
        secrets = os.path.join(base, "mssendmail.env")
        with open(secrets, "w") as fh:
            fh.write(f"QUEUE_DIR={spool}\nCLIENT_SECRET={SECRET}\n")
        os.chown(secrets, 0, grp.getgrnam(SERVICE_USER).gr_gid)
        os.chmod(secrets, 0o640)
        env = {"PATH": "/usr/bin:/bin", "MSSENDMAIL_CONFIG": secrets, "QUEUE_DIR": spool}
        python = python_for(users[0])
        yield {
            "spool": spool,
            "secrets": secrets,
            "env": env,
            "python": python,
            "service": service,
            "t1": users[0],
            "t2": users[1],
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def submit_as(world: dict[str, Any], who: str, rcpt: str = "root") -> str:
    """Submit as a user; returns the new queue id."""
    before = set(os.listdir(os.path.join(world["spool"], MAILDROP)))
    proc = as_user(
        world[who],
        [*sendmail_cmd(world["python"]), "-i", rcpt],
        world["env"],
        f"Subject: from {who}\n\nprivate text of {who}\n".encode(),
    )
    assert proc.returncode == 0, proc.stderr
    assert SECRET.encode() not in proc.stdout + proc.stderr
    new = set(os.listdir(os.path.join(world["spool"], MAILDROP))) - before
    assert len(new) == 1
    return new.pop()


def probe(world: dict[str, Any], who: str, code: str) -> dict[str, str]:
    """Run Python as a user; the snippet fills `r` with outcome names."""
    wrapper = (
        "import json, os\nr = {}\n"
        "def t(name, fn):\n"
        "    try:\n        fn(); r[name] = 'ok'\n"
        "    except OSError as e:\n        r[name] = type(e).__name__\n"
        + code
        + "\nprint(json.dumps(r))"
    )
    proc = as_user(world[who], [*world["python"], wrapper], world["env"])
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_any_user_can_submit_without_reading_the_config(world: dict[str, Any]) -> None:
    queue_id = submit_as(world, "t1", "alice@example.com")
    path = os.path.join(world["spool"], MAILDROP, queue_id)
    st = os.stat(path)
    assert st.st_uid == world["t1"].pw_uid
    assert st.st_gid == grp.getgrnam(SERVICE_USER).gr_gid  # setgid maildrop/
    assert stat.S_IMODE(st.st_mode) == 0o640
    with open(path, "rb") as fh:
        envelope, _ = record.verify(fh)
    assert envelope["uid"] == world["t1"].pw_uid and envelope["user"] == "mssendmail-t1"
    assert envelope["recipients"] == ["alice@example.com"]


def test_a_submitters_commit_takes_the_path_its_file_system_allows(
    world: dict[str, Any],
) -> None:
    """A real unprivileged submitter cannot open maildrop/: on ext4, XFS or
    btrfs its second fsync (of the renamed file) commits the rename; elsewhere syncfs."""
    code = (
        f"import os, sys; sys.path.insert(0, {ROOT!r});"
        "from mssendmail.spool import layout; calls = []; fsync, syncfs = os.fsync, layout.syncfs;"
        "os.fsync = lambda fd: (calls.append('fsync'), fsync(fd))[1];"
        "layout.syncfs = lambda fd: (calls.append('syncfs'), syncfs(fd))[1];"
        "from mssendmail.submission.sendmail import main;"
        "rc = main(['mssendmail', '-i', 'root']); print(' '.join(calls)); sys.exit(rc)"
    )
    before = set(os.listdir(os.path.join(world["spool"], MAILDROP)))
    proc = as_user(world["t1"], [*world["python"], code], world["env"], b"Subject: path\n\nx\n")
    assert proc.returncode == 0, proc.stderr
    assert len(set(os.listdir(os.path.join(world["spool"], MAILDROP))) - before) == 1
    fstype = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", world["spool"]], capture_output=True, text=True
    ).stdout.strip()
    if fstype in ("ext4", "xfs", "btrfs"):
        assert proc.stdout.decode().split() == ["fsync", "fsync"], fstype
    else:
        assert proc.stdout.decode().split() == ["fsync", "syncfs"], fstype


def test_submitter_cannot_read_the_secrets(world: dict[str, Any]) -> None:
    result = probe(world, "t1", f"t('read', lambda: open({world['secrets']!r}).read())")
    assert result == {"read": "PermissionError"}


def test_others_cannot_list_read_or_delete(world: dict[str, Any]) -> None:
    queue_id = submit_as(world, "t1")
    spool = world["spool"]
    victim = os.path.join(spool, MAILDROP, queue_id)
    code = "\n".join(
        [
            f"t('list maildrop', lambda: os.listdir({os.path.join(spool, MAILDROP)!r}))",
            f"t('list queue', lambda: os.listdir({os.path.join(spool, QUEUE)!r}))",
            f"t('read', lambda: open({victim!r}, 'rb').read())",
            f"t('delete', lambda: os.unlink({victim!r}))",
            f"t('rename', lambda: os.rename({victim!r}, {victim + 'x'!r}))",
            f"t('truncate', lambda: os.truncate({victim!r}, 0))",
            f"t('chmod', lambda: os.chmod({victim!r}, 0o666))",
        ]
    )
    result = probe(world, "t2", code)
    assert all(outcome != "ok" for outcome in result.values()), result
    assert result["list maildrop"] == "PermissionError"
    assert result["delete"] == "PermissionError" and result["read"] == "PermissionError"
    assert os.path.exists(victim)
    with open(victim, "rb") as fh:
        record.verify(fh)  # untouched


def test_mailq_is_refused_to_submitters(world: dict[str, Any]) -> None:
    submit_as(world, "t1")
    proc = as_user(world["t2"], sendmail_cmd(world["python"], "mailq"), world["env"])
    assert proc.returncode == 77
    assert proc.stderr.startswith(b"mailq: ") and b"root" in proc.stderr
    assert b"mssendmail" in proc.stderr.split(b":", 1)[1]  # names the group to join
    assert b"private text" not in proc.stdout + proc.stderr


def test_q_flush_works_for_anyone(world: dict[str, Any]) -> None:
    proc = as_user(world["t2"], [*sendmail_cmd(world["python"]), "-q"], world["env"])
    assert proc.returncode == 0, proc.stderr


def test_service_user_reads_submissions(world: dict[str, Any]) -> None:
    queue_id = submit_as(world, "t2")
    victim = os.path.join(world["spool"], MAILDROP, queue_id)
    code = (
        f"t('list', lambda: os.listdir({os.path.join(world['spool'], MAILDROP)!r}))\n"
        f"t('read', lambda: open({victim!r}, 'rb').read())"
    )
    assert probe(world, "service", code) == {"list": "ok", "read": "ok"}
