"""Start-up validation (issue 13, findings 2 and 3), against the real programs.

Each broken setup is run through the real `mssendmail-worker --once` and the
real `mssendmail-queue check`: the worker must exit 78 with one line (never
a traceback) and `check` must FAIL with the same reason, so a `check` that
passes means the worker starts.

"Unreadable" setups need the kernel to refuse a read. As root the worker runs
without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv), so the file modes
apply to it as to anyone; as another user they apply anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mssendmail.spool.layout import init_tree

BIN = Path(sys.executable).parent
GOOD = {
    "TRANSPORT": "graph",
    "TENANT_ID": "contoso.example",
    "CLIENT_ID": "00000000-0000-0000-0000-000000000001",
    "CLIENT_SECRET": "not-used-the-worker-stops-before-the-network",
    "AUTHORITY_HOST": "https://127.0.0.1:9",
    "GRAPH_URL": "https://127.0.0.1:9",
    "SENDER": "relay@contoso.example",
}


def without_dac(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv") is None:
        pytest.skip("as root this needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", "--inh-caps=-all", f"--bounding-set={drop}", *argv]


def run(argv: list[str], cfg: Path, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MSSENDMAIL_CONFIG": str(cfg)}
    return subprocess.run(
        without_dac(argv) if unprivileged else argv,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def own_spool(root: Path) -> None:
    """As root, init gives the tree to a mssendmail user if one exists; the worker
    under test runs as this process's uid, so the tree must be its own."""
    init_tree(str(root))
    for path in [root, *root.iterdir()]:
        mode = os.lstat(path).st_mode & 0o7777
        os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(path, mode)  # chown cleared setgid: put it back


def write_cfg(path: Path, keys: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in keys.items() if v is not None))
    path.chmod(0o640)
    return path


def missing_spool(tmp: Path, keys: dict[str, str]) -> str:
    keys["QUEUE_DIR"] = str(tmp / "no" / "such" / "queue")
    return "does not exist"


def empty_queue_dir(tmp: Path, keys: dict[str, str]) -> str:
    (tmp / "empty").mkdir()
    keys["QUEUE_DIR"] = str(tmp / "empty")  # exists, never `init`ed: was a traceback in sweep
    return "is missing; fix QUEUE_DIR or run 'mssendmail-queue init'"


def unreadable_spool(tmp: Path, keys: dict[str, str]) -> str:
    os.chmod(os.path.join(keys["QUEUE_DIR"], "queue"), 0o000)
    return "is not readable and writable"


def bad_key(tmp: Path, keys: dict[str, str]) -> str:
    keys["RETRY_MIN"] = "soon"
    return "RETRY_MIN='soon'"


def bad_concurrency(tmp: Path, keys: dict[str, str]) -> str:
    keys["CONCURRENCY"] = "0"
    return "CONCURRENCY must be between"


def missing_sender(tmp: Path, keys: dict[str, str]) -> str:
    del keys["SENDER"]
    return "SENDER is not set"


def no_credential(tmp: Path, keys: dict[str, str]) -> str:
    del keys["CLIENT_SECRET"]
    return "no Graph credential is configured"


def two_credentials(tmp: Path, keys: dict[str, str]) -> str:
    keys["MANAGED_IDENTITY"] = "system"
    return "several Graph credentials are configured"


def unreadable_certificate(tmp: Path, keys: dict[str, str]) -> str:
    cert = tmp / "app.pem"
    cert.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    cert.chmod(0o000)
    del keys["CLIENT_SECRET"]
    keys["CLIENT_CERTIFICATE"] = str(cert)
    return "cannot read CLIENT_CERTIFICATE"


def unwritable_log_dir(tmp: Path, keys: dict[str, str]) -> str:
    (tmp / "logs").mkdir(mode=0o500)
    keys["LOG_DIR"] = str(tmp / "logs" / "mssendmail")
    return "is not writable"


def syntax_error(tmp: Path, keys: dict[str, str]) -> str:
    keys["FROM_NAME"] = "'Relay"  # an unclosed quote: python-dotenv only warned and skipped it
    return "(starts with FROM_NAME) cannot be parsed"


def bad_allowed_from_users(tmp: Path, keys: dict[str, str]) -> str:
    keys["ALLOWED_FROM_USERS"] = "alice:a@example.com,bob:b@example.com"  # a missing ";"
    return "ALLOWED_FROM_USERS entry 'bob:b@example.com' is neither an address nor @domain"


BROKEN: dict[str, tuple[Callable[[Path, dict[str, str]], str], bool]] = {
    "missing spool": (missing_spool, False),
    "QUEUE_DIR not initialised": (empty_queue_dir, False),
    "unreadable spool": (unreadable_spool, True),
    "bad key": (bad_key, False),
    "CONCURRENCY out of range": (bad_concurrency, False),
    "missing SENDER": (missing_sender, False),
    "no credential": (no_credential, False),
    "two credentials": (two_credentials, False),
    "unreadable certificate": (unreadable_certificate, True),
    "unwritable LOG_DIR": (unwritable_log_dir, True),
    "config syntax error": (syntax_error, False),
    "malformed ALLOWED_FROM_USERS": (bad_allowed_from_users, False),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_setup_worker_exits_78_in_one_line_and_check_fails(
    tmp_path: Path, name: str
) -> None:
    spool = tmp_path / "queue"
    own_spool(spool)
    keys = {**GOOD, "QUEUE_DIR": str(spool)}
    breaker, unprivileged = BROKEN[name]
    reason = breaker(tmp_path, keys)
    cfg = write_cfg(tmp_path / "broken.env", keys)
    worker = run([str(BIN / "mssendmail-worker"), "--once"], cfg, unprivileged)
    assert worker.returncode == 78, (worker.returncode, worker.stderr)
    lines = worker.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in worker.stderr, worker.stderr
    assert lines[0].startswith("mssendmail-worker: ") and reason in lines[0], lines[0]
    check = run([str(BIN / "mssendmail-queue"), "check"], cfg, unprivileged)
    assert check.returncode == 78, check.stdout + check.stderr
    fails = " ".join(
        " ".join(line.split()) for line in check.stdout.split("\n") if line.startswith("FAIL")
    )
    flat = " ".join(check.stdout.split())
    assert fails and reason in flat, check.stdout


def test_good_setup_passes_the_same_steps(tmp_path: Path) -> None:
    """The control: the same config unbroken passes every start-up step in check."""
    spool = tmp_path / "queue"
    init_tree(str(spool))
    cfg = write_cfg(tmp_path / "good.env", {**GOOD, "QUEUE_DIR": str(spool)})
    check = run([str(BIN / "mssendmail-queue"), "check"], cfg, False)
    by_name = {
        line.split()[1].rstrip(":"): line.split()[0]
        for line in check.stdout.splitlines()
        if line[:4] in ("PASS", "WARN", "FAIL")
    }
    for name in ("config", "credential", "sender", "spool"):
        assert by_name.get(name) == "PASS", check.stdout
