"""retry, requeue, hold, release and delete: transitions, errors, and a worker running alongside."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail.admin import actions as admin
from mssendmail.admin.cli import main
from mssendmail.delivery.pickup import pickup
from mssendmail.spool import meta, pause
from mssendmail.spool.claim import claim, lock
from mssendmail.spool.layout import ACTIVE, DEAD, DEFERRED, HOLD, MAILDROP, QUEUE, Spool
from tests import queuedemo

BIN = Path(sys.executable).parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- transitions ----------------------------------------------------------------


def test_retry_makes_a_deferred_message_due_now(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.defer(spool, qid, time.time() + 3600)
    code, out, _ = run(capsys, "retry", qid, "--config", str(config_file))
    assert code == 0 and out == f"{qid}: due now\n"
    assert os.stat(spool.path(DEFERRED, qid)).st_mtime <= time.time()
    assert meta.read(spool, qid)["history"][-1]["event"] == "retry"


def test_retry_all(spool: Spool, config_file: Path, clean_env: None) -> None:
    ids = queuedemo.queued(spool, 3)
    for qid in ids:
        queuedemo.defer(spool, qid, time.time() + 3600)
    assert main(["retry", "--all", "--config", str(config_file)]) == 0
    assert all(os.stat(spool.path(DEFERRED, q)).st_mtime <= time.time() for q in ids)


def test_requeue_resets_attempts_and_drops_the_reason(spool: Spool) -> None:
    [qid] = queuedemo.queued(spool, 1)
    queuedemo.bury(spool, qid, attempts=7)
    admin.requeue(spool, qid)
    assert spool.locate(qid) == QUEUE
    assert not os.path.exists(spool.reason_path(DEAD, qid))
    state = meta.read(spool, qid)
    assert state["attempts"] == 0 and "last_error" not in state and state["requeued"]


def test_requeue_all_dead(spool: Spool, config_file: Path, clean_env: None) -> None:
    ids = queuedemo.queued(spool, 3)
    for qid in ids:
        queuedemo.bury(spool, qid)
    assert main(["requeue", "--all-dead", "--config", str(config_file)]) == 0
    assert sorted(spool.ids(QUEUE)) == sorted(ids) and spool.ids(DEAD) == []


def test_hold_and_release(spool: Spool) -> None:
    [a, b] = queuedemo.queued(spool, 2)
    queuedemo.defer(spool, b, time.time() + 60)
    assert admin.hold(spool, a).text.endswith("on hold")
    assert admin.hold(spool, b).text.endswith("on hold")
    assert sorted(spool.ids(HOLD)) == sorted([a, b])
    assert admin.hold(spool, a).text.endswith("already on hold")
    admin.release(spool, a)
    assert spool.locate(a) == QUEUE
    events = [h["event"] for h in meta.read(spool, a)["history"]]
    assert events[-2:] == ["hold", "release"]


def test_wrong_state_is_refused(spool: Spool, config_file: Path, clean_env: None) -> None:
    [qid] = queuedemo.queued(spool, 1)
    with pytest.raises(admin.WrongState, match="queued"):
        admin.requeue(spool, qid)
    with pytest.raises(admin.WrongState):
        admin.release(spool, qid)
    assert main(["requeue", qid, "--config", str(config_file)]) == 65
    assert spool.locate(qid) == QUEUE


def test_a_message_being_sent_is_refused_politely(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a worker holds (flock in active/) is left alone: exit 75, one line."""
    [qid] = queuedemo.queued(spool, 1)
    held = claim(spool, qid, QUEUE)  # as the worker does
    assert held is not None
    try:
        for argv in (["hold", qid], ["delete", "--yes", qid], ["retry", qid]):
            code, _, err = run(capsys, *argv, "--config", str(config_file))
            assert code == 75
            busy = f"message {qid} is being sent right now; try again in a moment"
            assert err == f"mssendmail-queue: {busy}\n"
        assert spool.locate(qid) == ACTIVE
    finally:
        held.release()
    # The claimer died (lock gone): an orphan in active/ may be held.
    assert admin.hold(spool, qid).text.endswith("on hold")


def test_a_locked_deferred_message_is_not_touched(spool: Spool) -> None:
    [qid] = queuedemo.queued(spool, 1)
    until = time.time() + 3600
    queuedemo.defer(spool, qid, until)
    held = lock(spool, qid, DEFERRED)
    assert held is not None
    try:
        with pytest.raises(admin.Busy):
            admin.retry(spool, qid)
        assert os.stat(spool.path(DEFERRED, qid)).st_mtime == pytest.approx(until, abs=1)
    finally:
        held.release()


def test_unknown_id_exits_67_for_every_command(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("retry", "requeue", "hold", "release", "delete", "show"):
        for bad in ("0123456789abcdef01", "../../etc/passwd"):
            code, _, err = run(capsys, command, bad, "--config", str(config_file))
            assert code == 67, (command, err)
            assert err.count("\n") == 1 and "no such message" in err


def test_delete_removes_message_meta_and_reason(
    spool: Spool, config_file: Path, clean_env: None
) -> None:
    [a, b] = queuedemo.queued(spool, 2)
    queuedemo.bury(spool, a)
    queuedemo.defer(spool, b, time.time() + 60)
    assert main(["delete", a, b, "--config", str(config_file)]) == 0  # stdin is not a TTY
    assert spool.locate(a) is None and spool.locate(b) is None
    assert not meta.exists(spool, a) and not meta.exists(spool, b)
    assert not os.path.exists(spool.reason_path(DEAD, a))


def test_delete_all_dead_and_older_than(spool: Spool, config_file: Path, clean_env: None) -> None:
    old = queuedemo.queued(spool, 2)
    for qid in old:
        queuedemo.bury(spool, qid)
    [keep] = queuedemo.queued(spool, 1)
    from mssendmail.admin.listing import collect

    assert main(["delete", "--older-than", "30d", "--yes", "--config", str(config_file)]) == 0
    assert sorted(spool.ids(DEAD)) == sorted(old)  # nothing was 30 days old
    assert (
        main(
            [
                "delete",
                "--older-than",
                "0s",
                "--state",
                "dead",
                "--yes",
                "--config",
                str(config_file),
            ]
        )
        == 0
    )
    assert spool.ids(DEAD) == [] and spool.ids(QUEUE) == [keep]
    assert [r.id for r in collect(spool)] == [keep]
    assert main(["delete", "--older-than", "soon", "--config", str(config_file)]) == 64
    assert main(["delete", "--all-dead", "--yes", "--config", str(config_file)]) == 0


def test_delete_asks_on_a_terminal(
    spool: Spool,
    config_file: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    [qid] = queuedemo.queued(spool, 1)
    monkeypatch.setattr(sys, "stdin", Tty("n\n"))
    code, out, _ = run(capsys, "delete", qid, "--config", str(config_file))
    assert code == 0 and "? [y/N]" in out and "nothing deleted" in out
    assert spool.locate(qid) == QUEUE
    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    code, out, _ = run(capsys, "delete", qid, "--config", str(config_file))
    assert code == 0 and out.endswith(f"{qid}: deleted\n")
    assert spool.locate(qid) is None


def test_delete_yes_does_not_ask(
    spool: Spool,
    config_file: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    [qid] = queuedemo.queued(spool, 1)
    monkeypatch.setattr(sys, "stdin", Tty(""))
    code, out, _ = run(capsys, "delete", "--yes", qid, "--config", str(config_file))
    assert code == 0 and "?" not in out and spool.locate(qid) is None


# -- with a real worker running ---------------------------------------------------


@pytest.fixture
def worker(config_file: Path, spool: Spool) -> Iterator[subprocess.Popen[str]]:
    """mssendmail-worker as a service with TRANSPORT=file, stopped with SIGTERM."""
    proc = subprocess.Popen(
        [str(BIN / "mssendmail-worker"), "--config", str(config_file)],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MSSENDMAIL_CONFIG"},
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(spool.path("state", "heartbeat.json")):
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.02)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def outbox(config_file: Path) -> set[str]:
    return {p.stem for p in (config_file.parent / "outbox").glob("*.eml")}


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def paused(spool: Spool) -> None:
    """Pause delivery the way the worker does after a credential failure; pickup goes on."""
    pause.pause_queue(spool, time.time(), "test pause", 3600, 3600)


def test_held_mail_is_not_sent_until_released(
    spool: Spool, config_file: Path, clean_env: None, worker: subprocess.Popen[str]
) -> None:
    paused(spool)
    ids = queuedemo.submit(spool, 3)
    wait_until(lambda: sorted(spool.ids(QUEUE)) == sorted(ids))  # picked up, not sent
    for qid in ids[:2]:
        assert admin.hold(spool, qid).text.endswith("on hold")
    pause.clear_queue_pause(spool)
    spool.wake()
    wait_until(lambda: ids[2] in outbox(config_file))
    time.sleep(1.5)  # a few rescans
    for qid in ids[:2]:
        assert spool.locate(qid) == HOLD and qid not in outbox(config_file)
    for qid in ids[:2]:
        admin.release(spool, qid)
    spool.wake()
    wait_until(lambda: all(q in outbox(config_file) for q in ids))
    assert spool.ids(HOLD) == []


def test_retry_with_a_running_worker_sends_at_once(
    spool: Spool, config_file: Path, clean_env: None, worker: subprocess.Popen[str]
) -> None:
    paused(spool)
    ids = queuedemo.submit(spool, 3)
    wait_until(lambda: sorted(spool.ids(QUEUE)) == sorted(ids))
    for qid in ids:  # as an earlier failed attempt would leave them: due in an hour
        queuedemo.defer(spool, qid, time.time() + 3600)
    pause.clear_queue_pause(spool)
    time.sleep(1.5)
    assert not any(q in outbox(config_file) for q in ids)
    assert main(["retry", "--all", "--config", str(config_file)]) == 0
    started = time.monotonic()
    wait_until(lambda: all(q in outbox(config_file) for q in ids), timeout=10)
    assert time.monotonic() - started < 3.0


def test_admin_commands_racing_a_worker_never_double_act(
    spool: Spool, config_file: Path, clean_env: None, worker: subprocess.Popen[str]
) -> None:
    """Hold or delete each message as it is submitted while the worker sends them.

    Every message must end up in exactly one place: sent (in the outbox) or
    held or deleted, never sent *and* held/deleted, never lost.
    """
    outcomes: dict[str, str] = {}
    for i in range(40):
        [qid] = queuedemo.submit(spool, subject=f"race {i}")
        action = admin.hold if i % 2 else admin.delete
        for _ in range(50):
            try:
                action(spool, qid)
                outcomes[qid] = "held" if i % 2 else "deleted"
                break
            except admin.Busy:
                time.sleep(0.01)  # in maildrop or being sent: ask again
            except admin.WrongState:  # already sent
                outcomes[qid] = "sent"
                break
        else:
            outcomes[qid] = "busy"
    wait_until(lambda: not spool.ids(QUEUE) and not spool.ids(ACTIVE) and not spool.ids("maildrop"))
    time.sleep(0.3)
    sent = outbox(config_file)
    for qid, result in outcomes.items():
        where = spool.locate(qid)
        if result == "held":
            assert where == HOLD and qid not in sent, qid
        elif result == "deleted":
            assert where is None and qid not in sent, qid
        else:
            assert qid in sent and where is None, (qid, result)
    assert len(outcomes) == 40
    print(sorted(outcomes.values()).count("sent"), "sent by the worker first")


# -- a maildrop/ entry its submitter keeps locked (issue 12.4) --------------------


def _locked_by_another_holder(spool: Spool, qid: str) -> int:
    """A second open file description with the flock: as the submitter holding it would."""
    import fcntl

    fd = os.open(spool.path(MAILDROP, qid), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_delete_removes_a_submission_its_owner_keeps_locked(
    spool: Spool, config_file: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    [qid] = queuedemo.submit(spool, 1)
    fd = _locked_by_another_holder(spool, qid)
    try:
        code, _, err = run(capsys, "hold", qid, "--config", str(config_file))
        assert code == 75 and err.count("\n") == 1 and "still in maildrop/" in err
        started = time.monotonic()
        code, out, err = run(capsys, "delete", "--yes", qid, "--config", str(config_file))
        assert code == 0, err
        assert time.monotonic() - started < 5
        assert out == f"{qid}: deleted (it was held locked in maildrop/)\n"
        assert spool.locate(qid) is None
    finally:
        os.close(fd)
    pickup(spool, 1 << 24)
    assert spool.ids(QUEUE) == []


def test_a_delete_while_pickup_copies_the_message_is_not_undone(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker holds the original's flock while it copies: the delete goes on, the copy goes."""
    from mssendmail.delivery import pickup as pickup_module

    [qid] = queuedemo.submit(spool, 1)
    real_commit = pickup_module._commit
    results: list[str] = []

    def delete_first(spool: Spool, staged: list[pickup_module.Staged]) -> list[str]:
        results.append(admin.delete(spool, qid).text)
        return real_commit(spool, staged)

    monkeypatch.setattr(pickup_module, "_commit", delete_first)
    assert pickup(spool, 1 << 24) == []
    assert results == [f"{qid}: deleted (it was held locked in maildrop/)"]
    assert spool.locate(qid) is None and spool.ids(QUEUE) == []


def test_a_delete_after_pickup_linked_its_copy_deletes_the_copy(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the copy is in queue/ (still locked) when the original goes."""
    import threading

    from mssendmail.delivery import pickup as pickup_module

    [qid] = queuedemo.submit(spool, 1)
    real_check = pickup_module._original_still_there
    results: list[str] = []

    def delete_meanwhile(spool: Spool, item: pickup_module.Staged) -> bool:
        worker = threading.Thread(target=lambda: results.append(admin.delete(spool, qid).text))
        worker.start()
        deadline = time.monotonic() + 10
        while os.path.lexists(spool.path(MAILDROP, qid)):  # the admin removes the original,
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)  # then finds the copy in queue/, locked
        answer = real_check(spool, item)
        assert answer is False
        return answer

    monkeypatch.setattr(pickup_module, "_original_still_there", delete_meanwhile)
    assert pickup(spool, 1 << 24) == []
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        time.sleep(0.05)
    assert results == [f"{qid}: deleted (it was held locked in maildrop/)"]
    assert spool.locate(qid) is None and spool.ids(QUEUE) == []
