"""mssendmail in-process: modes, recipients, the lone-dot rule, bad input, signals."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssendmail.spool import record
from mssendmail.spool.layout import MAILDROP, TRIGGER, Spool
from mssendmail.submission.sendmail import LoneDotFilter, main

pytestmark = pytest.mark.usefixtures("clean_env")

SYSEXITS = {0, 64, 65, 66, 67, 69, 70, 71, 73, 74, 75, 76, 77, 78}


class Run:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err


@pytest.fixture
def submit(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    counter = iter(range(10**6))

    def run(argv: list[str], data: bytes = b"", prog: str = "mssendmail") -> Run:
        path = tmp_path / f"stdin.{next(counter)}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            rc = main([prog, *argv], stdin_fd=fd)
        finally:
            os.close(fd)
        out, err = capfd.readouterr()
        return Run(rc, out, err)

    return run


def records(spool: Spool) -> list[tuple[dict[str, Any], bytes]]:
    found = []
    for name in sorted(os.listdir(spool.dir(MAILDROP))):
        with open(spool.path(MAILDROP, name), "rb") as fh:
            envelope, size = record.verify(fh)
            found.append((envelope, record.read_message(fh, size)))
    return found


def only(spool: Spool) -> tuple[dict[str, Any], bytes]:
    found = records(spool)
    assert len(found) == 1, found
    return found[0]


def assert_nothing_queued(spool: Spool) -> None:
    assert os.listdir(spool.dir(MAILDROP)) == []


MSG = b"From: a@x\nTo: Bob <bob@example.com>, carol@example.com\nSubject: hi\n\nbody\n"


def test_headline_use_takes_recipients_from_headers(
    submit: Callable[..., Run], spool: Spool
) -> None:
    result = submit([], MSG + b"Bcc: not-a-header@x\n")
    assert (result.rc, result.out, result.err) == (0, "", "")
    envelope, body = only(spool)
    assert envelope["recipients"] == ["bob@example.com", "carol@example.com"]
    assert envelope["from_headers"] is True
    assert envelope["argv_recipients"] == []
    assert envelope["sender"] == "" and envelope["source"] == "sendmail"
    assert envelope["uid"] == os.getuid()
    assert body == MSG + b"Bcc: not-a-header@x\n"


def test_t_unites_headers_and_argv(submit: Callable[..., Run], spool: Spool) -> None:
    data = b"To: a@x\nCc: b@x\nTo: c@x\nBcc: hidden@x\nBcc: d@x, a@x\n\nbody\n"
    assert submit(["-t", "-i", "-f", "s@x", "extra@x", "a@x"], data).rc == 0
    envelope, _ = only(spool)
    assert envelope["recipients"] == ["extra@x", "a@x", "b@x", "c@x", "hidden@x", "d@x"]
    assert envelope["argv_recipients"] == ["extra@x", "a@x"]
    assert envelope["sender"] == "s@x"


def test_argv_recipients_do_not_read_headers(submit: Callable[..., Run], spool: Spool) -> None:
    assert submit(["-i", "--", "alice", "bob@y,carol@z"], MSG).rc == 0
    envelope, _ = only(spool)
    assert envelope["recipients"] == ["alice", "bob@y", "carol@z"]
    assert envelope["from_headers"] is False


def test_full_name_and_cron_flags(submit: Callable[..., Run], spool: Spool) -> None:
    result = submit(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], b"Subject: x\n\nout\n")
    assert result.rc == 0
    envelope, _ = only(spool)
    assert envelope["full_name"] == "CronDaemon"
    assert envelope["recipients"] == ["root"]


@pytest.mark.parametrize(
    ("data", "stored"),
    [
        (b"To: a@x\n\nline\n.\nafter\n", b"To: a@x\n\nline\n"),
        (b"To: a@x\n\nline\r\n.\r\nafter\r\n", b"To: a@x\n\nline\r\n"),
        (b"To: a@x\n\nline\n.", b"To: a@x\n\nline\n"),
        (b"To: a@x\n\n..stuffed\n.x\n. \n", b"To: a@x\n\n..stuffed\n.x\n. \n"),
        (b"To: a@x\n\nend.\n", b"To: a@x\n\nend.\n"),
    ],
)
def test_lone_dot_ends_input_without_i(
    submit: Callable[..., Run], spool: Spool, data: bytes, stored: bytes
) -> None:
    assert submit([], data).rc == 0
    assert only(spool)[1] == stored


def test_lone_dot_first_line_gives_empty_message(submit: Callable[..., Run], spool: Spool) -> None:
    assert submit(["root"], b".\nTo: a@x\n").rc == 0
    assert only(spool)[1] == b""


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_dot_is_data_with_i(submit: Callable[..., Run], spool: Spool, flag: str) -> None:
    data = b"To: a@x\n\nline\n.\nafter\n..two\n"
    assert submit([flag], data).rc == 0
    assert only(spool)[1] == data


def test_bytes_stored_exactly(submit: Callable[..., Run], spool: Spool) -> None:
    data = (
        b"To: a@x\r\nSubject: =?utf-8?q?x?=\r\n\r\n"
        b"crlf\r\nlf\nmixed\r\n\xe9t\xe9 8-bit \xff\n" + b"L" * 5000 + b"\nno final newline"
    )
    assert submit(["-i"], data).rc == 0
    assert only(spool)[1] == data


def test_empty_stdin_with_recipients(submit: Callable[..., Run], spool: Spool) -> None:
    assert submit(["root"], b"").rc == 0
    envelope, body = only(spool)
    assert body == b"" and envelope["recipients"] == ["root"]


def test_verbose_prints_queue_id(submit: Callable[..., Run], spool: Spool) -> None:
    result = submit(["-v", "root"], b"x\n")
    queue_id = os.listdir(spool.dir(MAILDROP))[0]
    assert result.rc == 0 and result.out == ""
    assert result.err == f"mssendmail: queued as {queue_id}\n"


@pytest.mark.parametrize(
    ("argv", "data", "code", "needle"),
    [
        ([], b"Subject: nobody\n\nx\n", 64, "no recipients"),
        (["-t"], b"To: undisclosed-recipients:;\n\nx\n", 64, "no recipients"),
        (["a b c"], b"x\n", 65, "'a b c'"),
        ([], b"To: ok@x, bad@@x\n\nx\n", 65, "bad@@x"),
        (["root"], b"ab\0cd\n", 65, "NUL"),
        (["-f", "a@x\nBcc: evil@y", "root"], b"x\n", 65, "line break"),
        (["-F", "Name\r\nBcc: evil@y", "root"], b"x\n", 65, "line break"),
        (["-Z", "root"], b"x\n", 64, "unknown option -Z"),
        (["-bd"], b"", 64, "mssendmail-smtpd"),
        (["-f"], b"", 64, "needs an argument"),
    ],
)
def test_bad_input(
    submit: Callable[..., Run],
    spool: Spool,
    argv: list[str],
    data: bytes,
    code: int,
    needle: str,
) -> None:
    result = submit(argv, data)
    assert result.rc == code
    assert result.err.startswith("mssendmail: ") and result.err.count("\n") == 1
    assert needle in result.err
    assert ";" in result.err  # what happened; what to do
    assert_nothing_queued(spool)


def test_too_many_recipients(submit: Callable[..., Run], spool: Spool) -> None:
    many = ",".join(f"u{i}@x" for i in range(10001))
    result = submit(["-i", many], b"x\n")
    assert result.rc == 65 and "at most 10000" in result.err
    assert_nothing_queued(spool)
    assert submit(["-i", many.rsplit(",", 1)[0]], b"x\n").rc == 0
    assert len(only(spool)[0]["recipients"]) == 10000


def test_envelope_too_big(submit: Callable[..., Run], spool: Spool) -> None:
    long_ones = ",".join(f"{'x' * 90}{i}@example.com" for i in range(6000))
    result = submit(["-i", long_ones], b"x\n")
    assert result.rc == 65 and "recipient list is too long" in result.err
    assert_nothing_queued(spool)


def test_size_limit_while_streaming(
    submit: Callable[..., Run], spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_MESSAGE_SIZE", "1000")
    assert submit(["root"], b"x" * 1000).rc == 0
    result = submit(["root"], b"x" * 1001)
    assert result.rc == 65 and "MAX_MESSAGE_SIZE" in result.err
    assert len(records(spool)) == 1  # the first; the partial second one is gone


def test_missing_spool_is_tempfail(
    submit: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUE_DIR", str(tmp_path / "nope"))
    result = submit(["root"], b"x\n")
    assert result.rc == 75
    assert "maildrop" in result.err and "mssendmail-queue init" in result.err


def test_disk_full_is_tempfail(
    submit: Callable[..., Run], spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if fd > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    result = submit(["root"], b"x\n")
    monkeypatch.undo()
    assert result.rc == 75 and "free disk space" in result.err
    assert_nothing_queued(spool)


def test_unexpected_error_is_one_line_70(
    submit: Callable[..., Run], spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("mssendmail.submission.writer.make_envelope", boom)
    result = submit(["root"], b"x\n")
    assert result.rc == 70
    assert result.err == (
        "mssendmail: internal error: RuntimeError: boom second line; please report this bug\n"
    )
    assert_nothing_queued(spool)


def test_config_flag_and_env(
    submit: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mssendmail.spool.layout import init_tree

    other = tmp_path / "other"
    init_tree(str(other))
    cfg = tmp_path / "other.env"
    cfg.write_text(f"QUEUE_DIR={other}\n")
    assert submit(["--config", str(cfg), "root"], b"x\n").rc == 0
    assert len(os.listdir(other / MAILDROP)) == 1
    monkeypatch.setenv("MSSENDMAIL_CONFIG", str(cfg))
    assert submit(["root"], b"x\n").rc == 0
    assert len(os.listdir(other / MAILDROP)) == 2
    monkeypatch.setenv("QUEUE_DIR", str(tmp_path / "nope"))  # environment beats the file
    assert submit(["root"], b"x\n").rc == 75


def test_unreadable_config_is_not_an_error(
    submit: Callable[..., Run], spool: Spool, monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    import builtins

    real_open = builtins.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(config_file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setenv("QUEUE_DIR", str(spool.root))
    monkeypatch.setattr(builtins, "open", guarded)
    assert submit(["root"], b"x\n").rc == 0
    monkeypatch.undo()
    assert len(records(spool)) == 1


def test_newaliases_and_bi(submit: Callable[..., Run], spool: Spool) -> None:
    for result in (submit([], b"", prog="newaliases"), submit(["-bi"]), submit(["-I"])):
        assert (result.rc, result.out, result.err) == (0, "", "")
    assert_nothing_queued(spool)


def test_help_and_version(submit: Callable[..., Run]) -> None:
    result = submit(["--help"])
    assert result.rc == 0 and "-t" in result.out and "--config" in result.out
    result = submit(["--version"])
    assert result.rc == 0 and result.out.startswith("mssendmail ")


def test_q_wakes_the_worker_with_a_flush(submit: Callable[..., Run], spool: Spool) -> None:
    fifo = os.open(spool.trigger_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert submit(["-q"]).rc == 0
        assert submit(["-q30m"]).rc == 0
        assert os.read(fifo, 10) == b"FF"
    finally:
        os.close(fifo)
    assert_nothing_queued(spool)


def test_q_needs_no_worker(submit: Callable[..., Run], spool: Spool) -> None:
    assert Path(spool.root, TRIGGER).exists()
    assert submit(["-q"]).rc == 0  # no reader on the FIFO: not an error


def test_submission_wakes_the_worker(submit: Callable[..., Run], spool: Spool) -> None:
    fifo = os.open(spool.trigger_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert submit(["root"], b"x\n").rc == 0
        assert os.read(fifo, 10) == b"\n"
    finally:
        os.close(fifo)


def test_mailq_and_bp_list(submit: Callable[..., Run], spool: Spool) -> None:
    assert submit(["-bp"]).out == "Mail queue is empty\n"
    assert submit(["-f", "s@x", "alice@x", "bob@y"], b"x" * 100).rc == 0
    queue_id = os.listdir(spool.dir(MAILDROP))[0]
    for result in (submit([], prog="mailq"), submit(["-bp"])):
        assert result.rc == 0
        lines = result.out.splitlines()
        assert lines[0].startswith("-Queue ID-")
        assert lines[1].startswith(queue_id) and " 100 " in lines[1] and "s@x" in lines[1]
        assert lines[2].strip() == "alice@x" and lines[3].strip() == "bob@y"
        assert lines[-1] == "-- 1 Kbytes in 1 Request."


def test_signal_handlers_restored(submit: Callable[..., Run]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    submit(["root"], b"x\n")
    assert signal.getsignal(signal.SIGTERM) == before


# ---- the lone-dot filter against a line-by-line reference --------------------


def reference_dot_cut(data: bytes) -> bytes:
    out = []
    for line in data.splitlines(keepends=True):
        if line in (b".\n", b".\r\n", b".", b".\r"):
            break
        out.append(line)
    return b"".join(out)


@given(
    st.lists(st.sampled_from([b".", b"\n", b"\r", b"a", b".\n", b"\r\n", b".."]), max_size=30),
    st.lists(st.integers(min_value=0, max_value=40), max_size=6),
)
def test_lone_dot_filter_is_chunking_invariant(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    if b"\r" in data.replace(b"\r\n", b""):
        data = data.replace(b"\r", b"")  # splitlines treats a lone CR as a line end; we don't
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    flt = LoneDotFilter()
    out = b""
    for chunk in chunks:
        out += flt.feed(chunk)
        if flt.ended:
            break
    assert out == reference_dot_cut(data)


# ---- never a traceback ------------------------------------------------------

_flag = st.sampled_from(
    ["-t", "-i", "-oi", "-f", "-F", "-bp", "-bi", "-bm", "-q", "-v", "-B", "-oem", "--", "-"]
)
_arg = st.one_of(_flag, st.text(max_size=12), st.sampled_from(["root", "a@x", "a b", "<>"]))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=st.lists(_arg, max_size=6), data=st.binary(max_size=300))
def test_random_input_never_tracebacks(
    submit: Callable[..., Run], argv: list[str], data: bytes
) -> None:
    argv = [a for a in argv if "--config" not in a and "\0" not in a]
    result = submit(argv, data)
    assert result.rc in SYSEXITS
    assert "Traceback" not in result.err
    assert result.err.count("\n") <= 1
    if result.rc:
        assert result.err.startswith(("mssendmail: ", "mailq: "))


# ---- signals, with the real program -------------------------------------------

MSSENDMAIL = os.path.join(os.path.dirname(sys.executable), "mssendmail")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE])
def test_signal_mid_message_queues_nothing(spool: Spool, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [MSSENDMAIL, "-i", "root"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"Subject: half\n\n" + b"x" * 30000)  # < pipe buffer: never blocks
    proc.stdin.flush()
    deadline = time.monotonic() + 10
    while not any(n.startswith("tmp.") for n in os.listdir(spool.dir(MAILDROP))):
        assert time.monotonic() < deadline, "the temp file never appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"mssendmail ignored {sig!r}") from None
    err = proc.stderr.read().decode()
    proc.stdin.close()
    assert rc == 75, err
    assert err.count("\n") == 1 and "nothing was queued" in err and "Traceback" not in err
    assert_nothing_queued(spool)


def test_kill_9_leaves_only_an_unlocked_temp_file(spool: Spool) -> None:
    import fcntl

    proc = subprocess.Popen([MSSENDMAIL, "-i", "root"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"x" * 1000)
    proc.stdin.flush()
    deadline = time.monotonic() + 10
    while not os.listdir(spool.dir(MAILDROP)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=10)
    proc.stdin.close()
    names = os.listdir(spool.dir(MAILDROP))
    assert len(names) == 1 and names[0].startswith("tmp.")
    fd = os.open(spool.path(MAILDROP, names[0]), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the worker could take it
    finally:
        os.close(fd)


def test_stdin_closed_is_an_empty_message(spool: Spool) -> None:
    proc = subprocess.run([MSSENDMAIL, "root"], stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert only(spool)[1] == b""


def test_slow_writer_is_read_until_eof(spool: Spool) -> None:
    proc = subprocess.Popen([MSSENDMAIL, "-i", "root"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    stdin = proc.stdin

    def feed() -> None:
        for part in (b"To: a@x\n", b"\n", b"one\n", b".\n", b"two\n"):
            stdin.write(part)
            stdin.flush()
            time.sleep(0.05)
        stdin.close()

    thread = threading.Thread(target=feed)
    thread.start()
    assert proc.wait(timeout=10) == 0
    thread.join()
    assert only(spool)[1] == b"To: a@x\n\none\n.\ntwo\n"


# ---- exit_main: the installed command skips the interpreter's teardown -------


def _exit_main(args: list[str], setup: str = "") -> subprocess.CompletedProcess[str]:
    """Run exit_main() as `mssendmail args` in a child; an object left in a global
    writes "teardown" from __del__, which only the interpreter's teardown calls."""
    code = (
        f"import os, sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "class Witness:\n"
        "    def __del__(self): os.write(1, b'teardown\\n')\n"
        "witness = Witness()\n"
        f"{setup}\n"
        "from mssendmail.submission.sendmail import exit_main\n"
        f"sys.argv = ['mssendmail', *{args!r}]\n"
        "exit_main()\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QUEUE_DIR": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def test_exit_main_skips_teardown_and_keeps_output_and_status() -> None:
    shown = _exit_main(["--version"])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("mssendmail ")  # a pipe: flushed before the exit
    assert "teardown" not in shown.stdout
    refused = _exit_main(["-bz"])
    assert refused.returncode == 64 and refused.stderr.startswith("mssendmail: ")
    assert "teardown" not in refused.stdout


@pytest.mark.parametrize(
    "setup",
    [
        "import atexit; atexit.register(lambda: os.write(1, b'atexit\\n'))",
        "import threading",  # threads may still need joining
    ],
)
def test_exit_main_exits_normally_when_something_is_left_to_run(setup: str) -> None:
    result = _exit_main(["--version"], setup)
    assert result.returncode == 0, result.stderr
    assert "teardown" in result.stdout
    if "atexit" in setup:
        assert "atexit" in result.stdout
