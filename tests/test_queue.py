"""mssendmail-queue as a program: init, show, test, permissions, usage, --config everywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail.admin.cli import main
from mssendmail.spool.layout import DEAD, DEFERRED, MAILDROP, Spool, init_tree
from tests import queuedemo

BIN = Path(sys.executable).parent
QUEUE_BIN = str(BIN / "mssendmail-queue")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_init_creates_then_reports_nothing_changed(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "fresh.env"
    root = tmp_path / "fresh-spool"
    cfg.write_text(f"QUEUE_DIR={root}\n")
    code, out, _ = run(capsys, "init", "--config", str(cfg))
    assert code == 0 and f"created {root}/deferred" in out
    assert os.path.isdir(root / "hold")
    os.chmod(root / "dead", 0o777)
    code, out, _ = run(capsys, "init", "--config", str(cfg))
    assert out == f"chmod 2770 {root}/dead\n"
    code, out, _ = run(capsys, "init", "--config", str(cfg))
    assert code == 0 and out == f"{root}: in order, nothing changed\n"


def test_show_a_dead_letter(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = queuedemo.demo(spool)
    [qid] = ids["dead"]
    code, out, _ = run(capsys, "show", qid, "--config", str(config_file))
    assert code == 0
    assert f"id:         {qid}" in out
    assert "state:      dead" in out
    assert "from:       cron@example.com" in out
    assert "to:         nobody@invalid" in out
    assert "why:        permanent failure" in out
    assert "code:       ErrorInvalidRecipients" in out
    assert "history:" in out and " dead " in out
    assert "headers:" in out and "  Subject: report 0" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_show_json_and_body(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = queuedemo.demo(spool)
    [qid] = ids["deferred"]
    code, out, _ = run(capsys, "show", qid, "--json", "--config", str(config_file))
    doc = json.loads(out)
    assert doc["state"] == "deferred" and doc["attempts"] == 3
    assert doc["checksum"] == "ok"
    assert ["Subject", "report 0"] in doc["headers"]
    assert doc["history"][-1]["event"] == "deferred"
    code, out, _ = run(capsys, "show", qid, "--body", "--config", str(config_file))
    assert code == 0 and out.startswith("From: app@example.com\n") and out.endswith("hello\n")


def test_show_a_sent_message(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = queuedemo.demo(spool)
    code, out, _ = run(capsys, "show", ids["sent"][0], "--config", str(config_file))
    assert code == 0 and "state:      sent" in out and "as relay@example.com" in out
    code, _, err = run(capsys, "show", ids["sent"][0], "--body", "--config", str(config_file))
    assert code == 67 and "no longer kept" in err


def test_show_reports_an_edited_file(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.defer(spool, qid, time.time() + 60)
    path = spool.path(DEFERRED, qid)
    with open(path, "r+b") as fh:
        fh.seek(3)
        fh.write(b"X")
    code, out, _ = run(capsys, "show", qid, "--config", str(config_file))
    assert code == 0 and "DAMAGED:    checksum mismatch" in out


def test_test_message_is_queued_and_followed_to_sent(
    spool: Spool, config_file: Path, clean_env: None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MSSENDMAIL_CONFIG"}
    cfg = str(config_file)
    worker = subprocess.Popen(
        [str(BIN / "mssendmail-worker"), "--config", str(config_file)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        result = subprocess.run(
            [QUEUE_BIN, "test", "ops@example.com", "--wait", "--timeout=20", "--config", cfg],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=20)
    assert result.returncode == 0, result.stderr
    qid, outcome = result.stdout.splitlines()
    assert outcome == "sent as relay@example.com after 1 attempt(s)"
    eml = (config_file.parent / "outbox" / f"{qid}.eml").read_text()
    assert "Subject: mssendmail test message from" in eml
    assert "mssendmail 0.1.0 on" in eml and "To: ops@example.com" in eml


def test_test_wait_times_out_without_a_worker(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, out, _ = run(
        capsys,
        "test",
        "ops@example.com",
        "--wait",
        "--timeout",
        "0.5",
        "--config",
        str(config_file),
    )
    assert code == 75 and time.monotonic() - started < 5
    qid, last = out.splitlines()
    assert spool.locate(qid) == MAILDROP
    assert last.startswith("still waiting for pickup (is the worker running?) after 0s")


def test_test_wait_reports_a_dead_letter(
    spool: Spool,
    config_file: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stand-in worker dead-letters the message while `test --wait` follows it."""
    from mssendmail.admin import cli as queue
    from mssendmail.delivery.pickup import pickup

    real_sleep = time.sleep

    def worker_step(seconds: float) -> None:
        for qid in pickup(spool, 1 << 20):
            queuedemo.bury(spool, qid, code="ErrorInvalidRecipients")
        real_sleep(seconds)

    monkeypatch.setattr(queue.time, "sleep", worker_step)
    code, out, _ = run(
        capsys,
        "test",
        "nobody@example.com",
        "--wait",
        "--timeout",
        "5",
        "--config",
        str(config_file),
    )
    assert code == 69
    assert "dead: permanent failure: At least one recipient is not valid." in out
    assert spool.ids(DEAD)


@pytest.mark.parametrize("address", ["not an address", "a@b\x1b[2J", "", "<a@b>, c@d"])
def test_test_rejects_bad_addresses(
    spool: Spool, config_file: Path, clean_env: None, address: str
) -> None:
    assert main(["test", address, "--config", str(config_file)]) == 64
    assert os.listdir(spool.dir(MAILDROP)) == []


def test_usage_errors_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["frobnicate"], ["show"], ["hold"], ["list", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 64, argv
        assert "Traceback" not in capsys.readouterr().err


def test_retry_without_ids_is_a_usage_error(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "retry", "--config", str(config_file))
    assert code == 64 and "--all" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["init"],
        ["list"],
        ["list", "--json"],
        ["stats"],
        ["retry", "--all"],
        ["requeue", "--all-dead"],
        ["delete", "--all-dead", "--yes"],
        ["check"],
    ],
)
def test_every_command_takes_config_before_or_after(
    spool: Spool, config_file: Path, clean_env: None, argv: list[str]
) -> None:
    """--config wins over MSSENDMAIL_CONFIG, in either position."""
    os.environ["MSSENDMAIL_CONFIG"] = "/nonexistent/mssendmail.env"  # clean_env restores it
    config_file.chmod(0o640)
    for full in (["--config", str(config_file), *argv], [*argv, "--config", str(config_file)]):
        code = main(full)
        assert code in (0, 78), full  # check may FAIL (no worker) but must read this config
    code = main([*argv, "--config", str(config_file)])
    if argv[0] == "list":
        assert code == 0


@pytest.fixture
def world_reachable_spool() -> Iterator[tuple[Path, Path]]:
    """A spool under a 0755 directory, so another user reaches its (0770) areas."""
    top = Path(tempfile.mkdtemp(prefix="mssq-"))
    os.chmod(top, 0o755)
    root = top / "queue"
    init_tree(str(root))
    cfg = top / "q.env"
    cfg.write_text(f"QUEUE_DIR={root}\nTRANSPORT=file\nOUTBOX_DIR={top}/out\n")
    cfg.chmod(0o644)
    try:
        yield root, cfg
    finally:
        shutil.rmtree(top)


def run_as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in a forked child that dropped to uid/gid 65534 with no groups.

    A fork, not an exec: the interpreter may live where nobody cannot read it.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(argv)
        except BaseException as exc:
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 70
            if not isinstance(exc, SystemExit):
                import traceback

                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with open(out_r) as out_fh, open(err_r) as err_fh:
        out, err = out_fh.read(), err_fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["show", "0123456789abcdef01"],
        ["retry", "--all"],
        ["requeue", "--all-dead"],
        ["hold", "0123456789abcdef01"],
        ["release", "0123456789abcdef01"],
        ["delete", "--all-dead", "--yes"],
        ["stats"],
        ["test", "a@example.com"],
        ["init"],
    ],
)
def test_a_user_outside_the_group_gets_77(
    world_reachable_spool: tuple[Path, Path], argv: list[str]
) -> None:
    root, cfg = world_reachable_spool
    spool = Spool(str(root))
    queuedemo.queued(spool, 1)
    os.chmod(root / "dead", 0o2777)  # so init has something to repair
    code, out, err = run_as_nobody([*argv, "--config", str(cfg)])
    assert code == 77, (argv, out, err)
    assert err.count("\n") == 1 and "run as root" in err, err
    if argv[0] != "init":
        assert err == "mssendmail-queue: run as root or a member of group mssendmail\n"
    assert out == ""
