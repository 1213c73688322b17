"""The worker program end to end with the file transport, as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mssendmail.spool.layout import DEAD, QUEUE, Spool
from mssendmail.submission.writer import Submission, make_envelope

BIN = Path(sys.executable).parent


def submit(spool: Spool, n: int = 1, rcpt: str = "a@example.com") -> list[str]:
    ids = []
    for i in range(n):
        with Submission(spool, 1 << 20) as sub:
            sub.write(f"Subject: m{i}\nTo: {rcpt}\n\nbody {i}\n".encode())
            ids.append(sub.commit(make_envelope("", [rcpt])))
    return ids


def run_worker(
    config_file: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mssendmail-worker"), "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "MSSENDMAIL_CONFIG"},
    )


def outbox(config_file: Path) -> Path:
    return config_file.parent / "outbox"


def test_once_delivers_everything_due_and_exits_0(spool: Spool, config_file: Path) -> None:
    ids = submit(spool, 5)
    result = run_worker(config_file, "--once")
    assert result.returncode == 0, result.stderr
    delivered = sorted(p.stem for p in outbox(config_file).glob("*.eml"))
    assert delivered == sorted(ids)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("outcome=sent") == 5
    for area in ("queue", "active", "deferred", "maildrop"):
        assert os.listdir(spool.dir(area)) == []


def test_once_with_unusable_config_exits_78(spool: Spool, tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text(f"QUEUE_DIR={spool.root}\nSENDER=r@example.com\nTRANSPORT=carrier-pigeon\n")
    result = run_worker(bad, "--once")
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1 and "TRANSPORT" in result.stderr


def test_once_with_missing_sender_exits_78_and_keeps_mail(spool: Spool, tmp_path: Path) -> None:
    cfg = tmp_path / "nosender.env"
    cfg.write_text(f"QUEUE_DIR={spool.root}\nTRANSPORT=file\nOUTBOX_DIR={tmp_path}/out\n")
    ids = submit(spool, 2)
    result = run_worker(cfg, "--once")
    assert result.returncode == 78, result.stderr
    assert "SENDER" in result.stderr and result.stderr.count("\n") == 1
    assert spool.ids(QUEUE) == []  # not even picked up
    from mssendmail.delivery.pickup import pickup

    pickup(spool, 1 << 20)
    assert sorted(spool.ids(QUEUE)) == sorted(ids)
    assert spool.ids(DEAD) == []


def test_service_picks_up_within_a_second_and_stops_on_sigterm(
    spool: Spool, config_file: Path
) -> None:
    proc = subprocess.Popen(
        [str(BIN / "mssendmail-worker"), "--config", str(config_file)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # let it start and open the trigger
        [qid] = submit(spool)
        started = time.monotonic()
        target = outbox(config_file) / f"{qid}.eml"
        while not target.exists() and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert target.exists()
        assert time.monotonic() - started < 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_two_once_workers_never_send_twice(spool: Spool, config_file: Path) -> None:
    ids = submit(spool, 60)
    procs = [
        subprocess.Popen(
            [str(BIN / "mssendmail-worker"), "--once", "--config", str(config_file)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    sends = sum(e.count("outcome=sent") for e in errs)
    assert sends == 60
    assert sorted(p.stem for p in outbox(config_file).glob("*.eml")) == sorted(ids)
