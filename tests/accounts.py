"""The users and groups this test session created, so it can remove them at the end.

A module of its own because pytest imports conftest.py as ``conftest`` while the
tests import it as ``tests.conftest``: two module objects, two lists, and the
session hook saw an empty one. Every user of the registry imports it from here.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess

# Users and groups this session created (tests/test_multiuser.py's ensure_user,
# the install.sh tests). As root they are removed when the session ends, so a
# run leaves the machine as it found it: install.sh would otherwise reuse a
# leftover "mssendmail" user. Only what this session created goes: another
# session on the same machine may be using accounts it made itself.
CREATED_ACCOUNTS: list[str] = []


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def note_created(name: str, existed_before: bool) -> None:
    """Record that this session made the account `name` (if it did not exist before)."""
    if not existed_before and account_exists(name) and name not in CREATED_ACCOUNTS:
        CREATED_ACCOUNTS.append(name)


def remove_created() -> None:
    """As root, delete the accounts (and their groups) this session created."""
    if os.geteuid() != 0 or shutil.which("userdel") is None:
        return
    for name in CREATED_ACCOUNTS:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        if shutil.which("groupdel"):
            subprocess.run(["groupdel", name], capture_output=True, check=False)
