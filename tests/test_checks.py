"""`mssendmail-queue check` against a local fake identity platform, and each local check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail.admin import checks
from mssendmail.admin.cli import main
from mssendmail.spool import pause
from mssendmail.spool.layout import STATE, Spool
from tests.fakegraph import FakeGraph, running


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(tmp_path / "fakegraph", monkeypatch) as server:
        yield server


def graph_config(tmp_path: Path, spool: Spool, fake: FakeGraph, extra: str = "") -> Path:
    path = tmp_path / "graph.env"
    path.write_text(
        f"QUEUE_DIR={spool.root}\nSENDER=relay@example.com\n{fake.config_text()}{extra}"
    )
    path.chmod(0o640)
    return path


def heartbeat(spool: Spool, age: float = 0.0, mode: str = "service", pid: object = 4242) -> None:
    doc = {"pid": pid, "time": time.time() - age, "mode": mode, "version": "0", "inflight": 0}
    Path(spool.path(STATE, "heartbeat.json")).write_text(json.dumps(doc))


def by_name(results: list[checks.Result]) -> dict[str, checks.Result]:
    return {r.name: r for r in results}


def run_check(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, str]:
    code = main(["check", "--config", str(config)])
    return code, capsys.readouterr().out


def test_token_without_mail_send_is_a_plain_fail(
    spool: Spool,
    tmp_path: Path,
    fake: FakeGraph,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.roles = ["User.Read.All"]
    heartbeat(spool)
    code, out = run_check(capsys, graph_config(tmp_path, spool, fake))
    assert code == 78
    lines = out.splitlines()
    assert any(line.startswith("PASS  token: acquired from https://127.0.0.1") for line in lines)
    [at] = [i for i, line in enumerate(lines) if "Mail.Send:" in line]
    assert lines[at].startswith("FAIL  Mail.Send: NOT granted (token roles: User.Read.All)")
    assert "admin consent" in " ".join(lines[at : at + 3])
    assert max(len(line) for line in lines) <= 80
    # the WARNs: ReadWrite, Mail.ReadBasic.All (duplicates possible), trigger
    assert lines[-1] == "check: 8 PASS, 3 WARN, 1 FAIL"  # + allowed-from (issue 12)
    assert fake.secret not in out
    assert len(fake.token_requests) == 1
    # The check keeps its token in memory: no cache for the worker to trip over.
    assert not any(name.startswith("msal") for name in os.listdir(spool.dir(STATE)))


def test_mail_send_without_readwrite_warns_about_large_messages(
    spool: Spool, tmp_path: Path, fake: FakeGraph, clean_env: None
) -> None:
    fake.roles = ["Mail.Send"]
    results = by_name(checks.run(str(graph_config(tmp_path, spool, fake))))
    assert results["Mail.Send"].status == checks.PASS
    assert results["Mail.ReadWrite"].status == checks.WARN
    assert "3 MB" in results["Mail.ReadWrite"].detail


def test_everything_right_passes_and_exits_0(
    spool: Spool,
    tmp_path: Path,
    fake: FakeGraph,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.roles = ["Mail.Send", "Mail.ReadWrite"]
    heartbeat(spool)
    reader = os.open(spool.trigger_path, os.O_RDONLY | os.O_NONBLOCK)  # a listening worker
    try:
        code, out = run_check(capsys, graph_config(tmp_path, spool, fake))
    finally:
        os.close(reader)
    assert code == 0, out
    lines = out.splitlines()
    assert not any(line.startswith(("FAIL", "WARN")) for line in lines)
    assert lines[-1] == "check: 12 PASS, 0 WARN, 0 FAIL"  # + sender (13), allowed-from (12)
    assert max(len(line) for line in lines) <= 80


def test_refused_secret_fails_the_token_step(
    spool: Spool, tmp_path: Path, fake: FakeGraph, clean_env: None
) -> None:
    cfg = graph_config(tmp_path, spool, fake)
    cfg.write_text(cfg.read_text().replace(fake.secret, "wrong-secret"))
    results = by_name(checks.run(str(cfg)))
    assert results["token"].status == checks.FAIL
    assert "wrong-secret" not in results["token"].detail
    assert "Mail.Send" not in results  # no token, no roles to read


def test_two_credentials_fail_and_skip_the_token(
    spool: Spool, tmp_path: Path, fake: FakeGraph, clean_env: None
) -> None:
    cfg = graph_config(tmp_path, spool, fake, "MANAGED_IDENTITY=system\n")
    results = by_name(checks.run(str(cfg)))
    assert results["credential"].status == checks.FAIL
    assert "several" in results["credential"].detail
    assert "token" not in results and fake.token_requests == []


def test_unknown_keys_are_flagged(spool: Spool, config_file: Path, clean_env: None) -> None:
    config_file.write_text(config_file.read_text() + "RETRY_MAXX=1h\n")
    config_file.chmod(0o600)
    result = checks.check_config(__import__("mssendmail.config").config.load(str(config_file)))
    assert result.status == checks.WARN and "RETRY_MAXX" in result.detail


def test_bad_value_fails_the_config(spool: Spool, config_file: Path, clean_env: None) -> None:
    config_file.write_text(config_file.read_text() + "RETRY_MIN=soon\n")
    results = checks.run(str(config_file))
    assert results[0].status == checks.FAIL and "RETRY_MIN" in results[0].detail


def test_world_readable_secrets_fail(spool: Spool, config_file: Path, clean_env: None) -> None:
    config_file.chmod(0o644)
    assert by_name(checks.run(str(config_file)))["secrets"].status == checks.FAIL
    config_file.chmod(0o640)
    assert by_name(checks.run(str(config_file)))["secrets"].status == checks.PASS


def test_spool_modes(spool: Spool) -> None:
    assert checks.check_spool_modes(spool).status == checks.PASS
    os.chmod(spool.dir("dead"), 0o2775)
    result = checks.check_spool_modes(spool)
    assert result.status == checks.FAIL
    assert "dead mode 2775, want 2770" in result.detail and "init" in result.detail


def test_worker_heartbeat(spool: Spool) -> None:
    assert checks.check_worker(spool).status == checks.FAIL  # never ran
    heartbeat(spool, age=5)
    assert checks.check_worker(spool).status == checks.PASS
    heartbeat(spool, age=600)
    assert checks.check_worker(spool).status == checks.FAIL
    heartbeat(spool, age=600, mode="once")  # timer-driven runs beat less often
    assert checks.check_worker(spool).status == checks.PASS


def test_a_finished_once_run_is_not_called_running(spool: Spool) -> None:
    """`check` right after `mssendmail-worker --once` ended: finished, not running."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    heartbeat(spool, age=1, mode="once", pid=int(done.stdout))
    result = checks.check_worker(spool)
    assert result.status == checks.PASS
    assert "running" not in result.detail and "finished" in result.detail
    heartbeat(spool, age=1, mode="once", pid=os.getpid())  # a run in progress
    assert "running (pid" in checks.check_worker(spool).detail
    for pid in (0, -1, True, "1", 1 << 40):
        heartbeat(spool, age=1, mode="once", pid=pid)
        assert "running" not in checks.check_worker(spool).detail, pid


def test_trigger(spool: Spool) -> None:
    assert checks.check_trigger(spool).status == checks.WARN  # no reader
    fd = os.open(spool.trigger_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert checks.check_trigger(spool).status == checks.PASS
    finally:
        os.close(fd)
    os.chmod(spool.trigger_path, 0o666)
    assert checks.check_trigger(spool).status == checks.FAIL
    os.unlink(spool.trigger_path)
    Path(spool.trigger_path).write_text("")
    assert checks.check_trigger(spool).status == checks.FAIL


def test_paused_queue_is_a_fail(spool: Spool) -> None:
    assert checks.check_pause(spool) is None
    pause.pause_queue(spool, time.time(), "invalid_client\x1b[2J", 60, 60)
    result = checks.check_pause(spool)
    assert result is not None and result.status == checks.FAIL
    assert "\x1b" not in result.detail


def test_file_transport_warns_and_needs_no_token(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.chmod(0o640)
    heartbeat(spool)
    code, out = run_check(capsys, config_file)
    assert "WARN  transport: TRANSPORT=file" in out
    assert "token" not in out
    assert code == 0


def test_token_without_any_roles_warns_about_rbac_for_applications(
    spool: Spool,
    tmp_path: Path,
    fake: FakeGraph,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.roles = []
    heartbeat(spool)
    code, out = run_check(capsys, graph_config(tmp_path, spool, fake))
    [line] = [line for line in out.splitlines() if "Mail.Send:" in line]
    assert line.startswith("WARN  Mail.Send: the token carries no application roles")
    assert "FAIL" not in out.split("check:")[0]
    assert code == 0


def test_a_users_own_quick_start_spool_passes_while_a_mssendmail_user_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 finding 10: run as a normal user on a machine that has the
    mssendmail user, the spool that user's own `init` made is in order."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the spool to another uid")
    from mssendmail.spool.layout import init_tree

    root = tmp_path / "q"
    init_tree(str(root))
    for path in [root, *root.iterdir()]:
        mode = os.lstat(path).st_mode & 0o7777
        os.chown(path, 4321, 4321, follow_symlinks=False)
        os.chmod(path, mode)
    monkeypatch.setattr(checks, "service_ids", lambda: (999, 995))
    monkeypatch.setattr(checks.os, "geteuid", lambda: 4321)
    monkeypatch.setattr(checks.os, "getegid", lambda: 4321)
    assert checks.check_spool_modes(Spool(str(root))).status == checks.PASS
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)  # root expects the service user
    assert checks.check_spool_modes(Spool(str(root))).status == checks.FAIL


def test_sent_items_lookup_permission_is_explained(
    spool: Spool, tmp_path: Path, fake: FakeGraph, clean_env: None
) -> None:
    fake.roles = ["Mail.Send"]
    config = str(graph_config(tmp_path, spool, fake))
    lookup = by_name(checks.run(config))["Mail.ReadBasic.All"]
    assert lookup.status == checks.WARN and "duplicate" in lookup.detail
    fake.roles = ["Mail.Send", "Mail.ReadBasic.All"]
    assert by_name(checks.run(config))["Mail.ReadBasic.All"].status == checks.PASS
    # What the worker met wins over the token: RBAC scopes may refuse one mailbox.
    doc = {"time": time.time(), "mailbox": "relay@example.com", "error": "Graph HTTP 403"}
    Path(spool.path(STATE, "sentitems-lookup.json")).write_text(json.dumps(doc))
    lookup = by_name(checks.run(config))["Mail.ReadBasic.All"]
    assert lookup.status == checks.WARN and "relay@example.com" in lookup.detail
