"""Issue 13: an admin is never stuck. Each finding, through the real programs.

The programs run as subprocesses against the strict local HTTPS fake of the
token endpoint and Graph (tests/fakegraph.py), as an admin would run them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fakegraph import FakeGraph
from tests.test_e2e_graph import BIN, env_for, fake, sendmail, setup, worker_once

__all__ = ["fake", "setup"]  # pytest fixtures, imported for their side effect


def queue_cmd(
    cfg: Path, fake: FakeGraph, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mssendmail-queue"), *args],
        capture_output=True,
        text=True,
        env=env_for(cfg, fake),
        timeout=timeout,
    )


def spool_of(cfg: Path) -> Path:
    return Path(cfg.read_text().split("QUEUE_DIR=")[1].split("\n")[0])


def set_key(cfg: Path, key: str, value: str) -> None:
    lines = [line for line in cfg.read_text().splitlines() if not line.startswith(f"{key}=")]
    cfg.write_text("\n".join([*lines, f"{key}={value}"]) + "\n")


def pause_on_bad_secret(cfg: Path, fake: FakeGraph) -> None:
    set_key(cfg, "CLIENT_SECRET", "wrong-secret")
    sendmail(cfg, fake, ["-i", "alice@example.org"], b"Subject: paused\n\nx\n")
    result = worker_once(cfg, fake)
    assert result.returncode == 75, result.stderr
    assert fake.messages == []


# -- finding 1: a paused queue can be seen and lifted --------------------------------


def test_pause_is_visible_in_list_show_stats_check_and_test_wait(
    setup: Path, fake: FakeGraph
) -> None:
    set_key(setup, "RETRY_MIN", "1h")
    set_key(setup, "RETRY_MAX", "1h")
    pause_on_bad_secret(setup, fake)
    listed = queue_cmd(setup, fake, "list")
    first = listed.stdout.splitlines()[0]
    assert first.startswith("delivery PAUSED until") and "invalid_client" in first, listed.stdout
    assert "mssendmail-queue resume" in first
    [row] = [
        json.loads(line) for line in queue_cmd(setup, fake, "list", "--json").stdout.splitlines()
    ]
    shown = queue_cmd(setup, fake, "show", row["id"])
    assert "delivery:   PAUSED until" in shown.stdout and "invalid_client" in shown.stdout
    assert "PAUSED until" in queue_cmd(setup, fake, "stats").stdout
    checked = queue_cmd(setup, fake, "check")
    assert checked.returncode == 78
    [line] = [x for x in checked.stdout.splitlines() if "delivery:" in x]
    assert line.startswith("FAIL") and "PAUSED until" in line, checked.stdout
    assert "invalid_client" in checked.stdout
    waited = queue_cmd(setup, fake, "test", "bob@example.org", "--wait", "--timeout", "1")
    assert waited.returncode == 75
    last = " ".join(waited.stdout.split("after 1s;")[-1].split())
    assert last.count("not sent because delivery PAUSED") == 1, waited.stdout
    assert "invalid_client" in last


def test_resume_retry_all_and_sendmail_q_lift_the_pause_and_say_so(
    setup: Path, fake: FakeGraph
) -> None:
    set_key(setup, "RETRY_MIN", "1h")
    set_key(setup, "RETRY_MAX", "1h")
    pause_on_bad_secret(setup, fake)
    pause_file = spool_of(setup) / "state" / "pause.json"
    resumed = queue_cmd(setup, fake, "resume")
    assert resumed.returncode == 0 and "delivery resumed" in resumed.stdout, resumed
    assert not pause_file.exists()
    assert "not paused" in queue_cmd(setup, fake, "resume").stdout

    assert worker_once(setup, fake).returncode == 75  # still the wrong secret: paused again
    retried = queue_cmd(setup, fake, "retry", "--all")
    assert retried.returncode == 0 and "delivery resumed" in retried.stdout, retried
    assert "nothing to do" not in retried.stdout and not pause_file.exists()

    assert worker_once(setup, fake).returncode == 75
    flushed = subprocess.run(
        [str(BIN / "mssendmail"), "-q"], capture_output=True, text=True, env=env_for(setup, fake)
    )
    assert flushed.returncode == 0 and "delivery resumed" in flushed.stderr, flushed
    assert not pause_file.exists()


def test_fixing_the_secret_lifts_the_pause_at_the_next_worker_start(
    setup: Path, fake: FakeGraph
) -> None:
    set_key(setup, "RETRY_MIN", "1h")
    set_key(setup, "RETRY_MAX", "1h")
    pause_on_bad_secret(setup, fake)
    asked = len(fake.token_requests)
    again = worker_once(setup, fake)  # same settings: the pause holds, no token request
    assert again.returncode == 75 and len(fake.token_requests) == asked
    record = json.loads((spool_of(setup) / "state" / "pause.json").read_text())
    assert "wrong-secret" not in json.dumps(record) and len(record["credential"]) == 32
    set_key(setup, "CLIENT_SECRET", fake.secret)
    fixed = worker_once(setup, fake)
    assert fixed.returncode == 0, fixed.stderr
    assert "pause-lifted" in fixed.stderr and "credential settings changed" in fixed.stderr
    assert len(fake.messages) == 1


# -- finding 4: a changed credential is proved at once, not after the cached token -----


def test_changed_secret_drops_the_cached_token(setup: Path, fake: FakeGraph) -> None:
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: one\n\nx\n")
    first = worker_once(setup, fake)
    assert first.returncode == 0, first.stderr
    assert "token-cache-dropped" not in first.stderr  # the first run had nothing cached
    assert len(fake.messages) == 1 and len(fake.token_requests) == 1
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: two\n\nx\n")
    assert worker_once(setup, fake).returncode == 0
    assert len(fake.token_requests) == 1  # the disk cache serves unchanged settings
    # A wrong new secret must fail now, as `check` says, not in an hour.
    set_key(setup, "CLIENT_SECRET", "changed-and-wrong")
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: three\n\nx\n")
    result = worker_once(setup, fake)
    assert result.returncode == 75, result.stderr
    assert "token-cache-dropped" in result.stderr
    assert len(fake.token_requests) == 2 and len(fake.messages) == 2
    # The right new secret: proved by a fresh token request, and the mail goes.
    fake.secret = "rotated-secret"
    set_key(setup, "CLIENT_SECRET", "rotated-secret")
    result = worker_once(setup, fake)
    assert result.returncode == 0, result.stderr
    assert len(fake.token_requests) == 3 and len(fake.messages) == 3


# -- finding 9: one answer to "is it sent?" -------------------------------------------


def test_test_wait_and_show_call_a_sent_message_sent_before_its_record_exists(
    setup: Path, fake: FakeGraph
) -> None:
    spool = spool_of(setup)
    # Without PYTHONUNBUFFERED (set in the lab, not on an admin's machine): the id
    # must reach the pipe while --wait is still following the message.
    env = {k: v for k, v in env_for(setup, fake).items() if k != "PYTHONUNBUFFERED"}
    waiting = subprocess.Popen(
        [str(BIN / "mssendmail-queue"), "test", "bob@example.org", "--wait", "--timeout", "20"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert waiting.stdout is not None
    queue_id = waiting.stdout.readline().strip()
    # What the worker does right after Graph's 202: the rename into sent/ is the
    # no-resend promise; the record sent/<id>.json comes a moment later.
    (spool / "maildrop" / queue_id).rename(spool / "sent" / queue_id)
    rest, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, rest
    assert rest.startswith("sent as"), rest
    shown = queue_cmd(setup, fake, "show", queue_id)
    assert shown.returncode == 0 and "state:      sent" in shown.stdout, shown


# -- finding 8: hold right after submission ---------------------------------------------


def test_hold_show_and_delete_work_on_a_message_still_in_maildrop(
    setup: Path, fake: FakeGraph
) -> None:
    spool = spool_of(setup)
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: hold me\n\nx\n")
    [queue_id] = (p.name for p in (spool / "maildrop").iterdir())
    shown = queue_cmd(setup, fake, "show", queue_id)
    assert shown.returncode == 0 and "state:      queued" in shown.stdout, shown
    held = queue_cmd(setup, fake, "hold", queue_id)
    assert held.returncode == 0 and held.stdout.strip() == f"{queue_id}: on hold", held
    assert "try again" not in held.stdout + held.stderr
    assert (spool / "hold" / queue_id).exists() and not (spool / "maildrop" / queue_id).exists()
    assert worker_once(setup, fake).returncode == 0 and fake.messages == []  # held: not sent
    released = queue_cmd(setup, fake, "release", queue_id)
    assert released.returncode == 0, released
    assert worker_once(setup, fake).returncode == 0 and len(fake.messages) == 1
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: delete me\n\nx\n")
    [second] = (p.name for p in (spool / "maildrop").iterdir())
    deleted = queue_cmd(setup, fake, "delete", "--yes", second)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted
    assert not any((spool / "maildrop").iterdir())


# -- finding 6: without systemd ----------------------------------------------------------


def file_config(tmp: Path, spool: Path) -> Path:
    outbox = tmp / "outbox"
    outbox.mkdir(exist_ok=True)
    cfg = tmp / "file.env"
    cfg.write_text(
        f"QUEUE_DIR={spool}\nTRANSPORT=file\nOUTBOX_DIR={outbox}\nSENDER=relay@example.com\n"
    )
    return cfg


def test_log_lines_carry_an_iso_time_unless_stderr_is_the_journal(
    tmp_path: Path, spool_dir: Path
) -> None:
    import re

    cfg = file_config(tmp_path, spool_dir)
    base = {"PATH": "/usr/bin:/bin", "MSSENDMAIL_CONFIG": str(cfg)}
    worker = [str(BIN / "mssendmail-worker"), "--once"]
    plain = subprocess.run(worker, capture_output=True, text=True, env=base, timeout=60)
    assert plain.returncode == 0, plain.stderr
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO "
    assert all(re.match(stamp, line) for line in plain.stderr.splitlines()), plain.stderr
    journal = subprocess.run(
        worker, capture_output=True, text=True, env={**base, "JOURNAL_STREAM": "8:1"}, timeout=60
    )
    assert journal.stderr.startswith("INFO event=start"), journal.stderr


def test_uninstall_stops_a_worker_started_by_hand_from_its_venv(tmp_path: Path) -> None:
    import os
    import shutil
    import time

    import pytest

    if os.geteuid() != 0:
        pytest.skip("uninstall.sh needs root")
    root = tmp_path / "root"
    venv_bin = root / "opt" / "mssendmail" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    # Stands in for the console script: the same path in its command line.
    fake_worker = venv_bin / "mssendmail-worker"
    fake_worker.write_text("#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n")
    fake_worker.chmod(0o755)
    running = subprocess.Popen([str(fake_worker)])
    try:
        time.sleep(0.3)
        script = Path(__file__).resolve().parent.parent / "util" / "uninstall.sh"
        done = subprocess.run(
            ["bash", str(script), "--root", str(root)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert f"stopped mssendmail-worker (pid {running.pid})" in done.stdout, done.stdout
        assert running.wait(timeout=10) == 0
        assert not venv_bin.exists()
    finally:
        if running.poll() is None:
            running.kill()
        shutil.rmtree(root, ignore_errors=True)


# -- finding 4 (reload): SIGHUP re-reads .env, a broken one keeps the old -----------------


def wait_for_file(directory: Path, timeout: float = 20.0) -> list[Path]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.eml"))
        if found:
            return found
        time.sleep(0.05)
    return []


def test_sighup_reloads_the_config_and_a_broken_one_keeps_the_old(
    tmp_path: Path, spool_dir: Path
) -> None:
    import signal

    cfg = file_config(tmp_path, spool_dir)
    first, second = tmp_path / "outbox", tmp_path / "outbox2"
    second.mkdir()
    env = {"PATH": "/usr/bin:/bin", "MSSENDMAIL_CONFIG": str(cfg)}
    worker = subprocess.Popen(
        [str(BIN / "mssendmail-worker")], env=env, stderr=subprocess.PIPE, text=True
    )

    def submit(subject: str) -> None:
        done = subprocess.run(
            [str(BIN / "mssendmail"), "-i", "alice@example.org"],
            input=f"Subject: {subject}\n\nx\n",
            text=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 0

    try:
        submit("before")
        assert len(wait_for_file(first)) == 1
        cfg.write_text(cfg.read_text().replace(f"OUTBOX_DIR={first}", f"OUTBOX_DIR={second}"))
        worker.send_signal(signal.SIGHUP)
        submit("after reload")
        assert len(wait_for_file(second)) == 1, "the reloaded OUTBOX_DIR was not used"
        cfg.write_text(cfg.read_text() + "RETRY_MIN=soon\n")
        worker.send_signal(signal.SIGHUP)
        submit("after a broken reload")
        import time

        deadline = time.monotonic() + 20
        while len(list(second.glob("*.eml"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(second.glob("*.eml"))) == 2, "the old config stopped working"
        assert worker.poll() is None, "SIGHUP ended the worker"
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    failed = [line for line in err.splitlines() if "reload-failed" in line]
    assert len(failed) == 1 and "RETRY_MIN" in failed[0], err
    assert "event=reloaded" in err and "Traceback" not in err


# -- finding 5: proxy and private CA from .env --------------------------------------------


def test_worker_and_check_go_through_the_proxy_and_ca_named_in_the_config(
    setup: Path, fake: FakeGraph
) -> None:
    from tests.connectproxy import ConnectProxy

    env = {k: v for k, v in env_for(setup, fake).items() if not k.endswith("CA_BUNDLE")}
    env = {k: v for k, v in env.items() if k.lower() not in ("https_proxy", "no_proxy")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    with ConnectProxy() as proxy:
        set_key(setup, "HTTPS_PROXY", proxy.url)
        set_key(setup, "CA_BUNDLE", fake.ca_path)  # only the config trusts the fake's CA
        sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: via proxy\n\nx\n")
        sent = run(str(BIN / "mssendmail-worker"), "--once")
        assert sent.returncode == 0, sent.stderr
        assert len(fake.messages) == 1
        port = fake.url.rsplit(":", 1)[1]
        assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{port}"}
        checked = run(str(BIN / "mssendmail-queue"), "check")
        # One line, wrapped at 80 columns: compare without the wrapping.
        line = "".join(checked.stdout.split("token:")[1].split("\nPASS")[0].split())
        assert f"proxy{proxy.url},CA{fake.ca_path})" in line, checked.stdout
        through = len(proxy.targets)
        set_key(setup, "NO_PROXY", "127.0.0.1")
        sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: direct\n\nx\n")
        direct = run(str(BIN / "mssendmail-worker"), "--once")
        assert direct.returncode == 0 and len(fake.messages) == 2, direct.stderr
        assert len(proxy.targets) == through  # NO_PROXY: straight to the host
        set_key(setup, "CA_BUNDLE", "/nonexistent/ca.pem")
        broken = run(str(BIN / "mssendmail-worker"), "--once")
        assert broken.returncode == 78 and "CA_BUNDLE" in broken.stderr, broken.stderr
