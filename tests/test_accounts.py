"""A root run of the suite removes the accounts it created (issue 13, finding 10).

The session hook is driven as pytest drives it: a child pytest session loads a
copy of tests/conftest.py by path (as the module ``conftest``, as pytest loads
the real one) and its test records a user it created through ``tests.``, the
way test_multiuser.py and the install.sh tests do. The registry used to live in
conftest.py itself, so the hook and the tests held two different lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.accounts import account_exists

REPO = Path(__file__).resolve().parent.parent

CHILD_TEST = """
import subprocess
from tests.accounts import note_created

def test_makes_a_user():
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--user-group", "{name}"], check=True)
    note_created("{name}", existed_before=False)
"""


def test_a_root_session_removes_the_users_and_groups_it_created(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating and removing users needs root and useradd")
    name = f"mssendmail-acct{os.getpid() % 100000}"
    assert not account_exists(name)
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_child.py").write_text(CHILD_TEST.format(name=name))
    try:
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stdout + child.stderr
        assert not account_exists(name), "the session left its user behind"
        groups = subprocess.run(["getent", "group", name], capture_output=True, text=True)
        assert groups.returncode == 2, f"the session left its group behind: {groups.stdout}"
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
