"""``mssendmail -bs`` as a real subprocess, driven the way Symfony Mailer drives it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtpwire import Wire, bs_argv, maildrop_names, queued_id, read_record, split_received

from mssendmail.spool.layout import Spool

pytestmark = pytest.mark.usefixtures("clean_env")


class BsProcess:
    def __init__(self, env: dict[str, str] | None = None, stdin: object = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            bs_argv(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        self.wire = Wire(self.proc.stdout, self.proc.stdin)  # type: ignore[arg-type]

    def finish(self) -> tuple[int, bytes, bytes]:
        """Close stdin, wait; (exit code, rest of stdout, stderr)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        out = self.proc.stdout.read() if self.proc.stdout else b""
        err = self.proc.stderr.read() if self.proc.stderr else b""
        return self.proc.wait(timeout=20), out, err


@pytest.fixture
def bs() -> Iterator[BsProcess]:
    proc = BsProcess()
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()
    for stream in (proc.proc.stdin, proc.proc.stdout, proc.proc.stderr):
        if stream is not None:
            stream.close()


# What Symfony's SmtpTransport writes for a message with To, Cc and Bcc:
# CRLF everywhere, lines starting with "." doubled, Bcc only in RCPT TO.
SYMFONY_MESSAGE = (
    b"From: App <app@example.org>\r\n"
    b"To: alice@example.org\r\n"
    b"Cc: carol@example.org\r\n"
    b"Subject: Hello from Symfony\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"..a line that starts with a dot\r\n"
    b"..\r\n"
    b"...three\r\n"
    b"Gr=C3=BC=C3=9Fe\r\n"
)
UNSTUFFED = (
    SYMFONY_MESSAGE.replace(b"\r\n...three", b"\r\n..three")
    .replace(b"\r\n..\r\n", b"\r\n.\r\n")
    .replace(b"\r\n..a line", b"\r\n.a line")
)


def symfony_send(w: Wire, subject: bytes) -> str:
    w.expect("MAIL FROM:<app@example.org>", 250)
    for rcpt in ("alice@example.org", "carol@example.org", "hidden@example.org"):
        code, _ = w.command(f"RCPT TO:<{rcpt}>")
        assert code in (250, 251, 252)  # what Symfony accepts
    return queued_id(w.message(SYMFONY_MESSAGE.replace(b"Hello from Symfony", subject)))


def test_symfony_dialogue_two_messages_without_rset(bs: BsProcess, spool: Spool) -> None:
    assert bs.wire.reply()[0] == 220
    bs.wire.expect("HELO [127.0.0.1]", 250)
    first = symfony_send(bs.wire, b"first")
    second = symfony_send(bs.wire, b"second")  # straight to MAIL FROM, no RSET
    bs.wire.expect("QUIT", 221)
    rc, rest, err = bs.finish()
    assert (rc, rest, err) == (0, b"", b"")
    assert maildrop_names(spool) == sorted([first, second])
    for qid, subject in ((first, b"first"), (second, b"second")):
        envelope, message = read_record(spool, qid)
        received, stored = split_received(message)
        assert stored == UNSTUFFED.replace(b"Hello from Symfony", subject)
        assert b"(uid %d)" % os.getuid() in received and b"with SMTP id" in received
        assert envelope["recipients"] == [
            "alice@example.org",
            "carol@example.org",
            "hidden@example.org",
        ]
        assert envelope["sender"] == "app@example.org"
        assert envelope["source"] == "bs" and envelope["uid"] == os.getuid()


def test_nothing_on_stderr_at_startup_and_eof_exits_zero(bs: BsProcess) -> None:
    assert bs.wire.reply()[0] == 220
    rc, rest, err = bs.finish()  # no QUIT: end of input ends the session
    assert (rc, rest, err) == (0, b"", b"")


def test_pipelined_ehlo_session(bs: BsProcess, spool: Spool) -> None:
    bs.wire.reply()
    bs.wire.send(
        b"EHLO client.example\r\nMAIL FROM:<app@example.org> SIZE=200\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
    )
    code, ehlo = bs.wire.reply()
    assert code == 250
    assert {b"250-PIPELINING", b"250-8BITMIME", b"250-ENHANCEDSTATUSCODES"} <= set(ehlo)
    assert any(line.startswith(b"250-SIZE ") for line in ehlo)
    assert [bs.wire.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    bs.wire.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
    qid = queued_id(bs.wire.reply()[1][0])
    assert [bs.wire.reply()[0] for _ in range(2)] == [250, 221]
    assert bs.finish()[0] == 0
    envelope, message = read_record(spool, qid)
    assert split_received(message)[1] == b"Subject: pipelined\r\n\r\nbody\r\n"
    assert b"with ESMTP id" in message
    assert envelope["recipients"] == ["alice@example.org", "bob@example.org"]


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        (["MAIL FROM:<a@@example.org>"], 501),
        (["MAIL FROM:<a@example.org>", "RCPT TO:<not an address>"], 501),
        (["MAIL FROM:<a@example.org>", "DATA"], 503),
        (["DATA"], 503),
        (["MAIL FROM:<a@example.org> SIZE=999999999"], 552),
        (["XYZZY"], 500),
        (["VRFY alice@example.org"], 252),
    ],
)
def test_error_replies(bs: BsProcess, spool: Spool, commands: list[str], code: int) -> None:
    bs.wire.reply()
    bs.wire.expect("EHLO client.example", 250)
    for command in commands[:-1]:
        bs.wire.expect(command, 250)
    lines = bs.wire.expect(commands[-1], code)
    assert lines[-1][4:5].isdigit()  # enhanced status code, as advertised
    bs.wire.expect("QUIT", 221)
    assert bs.finish()[0] == 0
    assert maildrop_names(spool) == []


def test_552_for_data_over_max_message_size(spool: Spool) -> None:
    proc = BsProcess(env={"MAX_MESSAGE_SIZE": "1k"})
    try:
        proc.wire.reply()
        proc.wire.expect("HELO x", 250)
        proc.wire.expect("MAIL FROM:<a@example.org>", 250)
        proc.wire.expect("RCPT TO:<b@example.org>", 250)
        reply = proc.wire.message(b"Subject: big\r\n\r\n" + b"y" * 2000 + b"\r\n")
        assert reply.startswith(b"552 5.3.4 ")
        proc.wire.expect("QUIT", 221)
        assert proc.finish()[0] == 0
    finally:
        proc.proc.kill()
        proc.proc.wait()
    assert maildrop_names(spool) == []


def test_451_when_the_spool_cannot_take_it(tmp_path: Path) -> None:
    proc = BsProcess(env={"QUEUE_DIR": str(tmp_path / "no-such-spool")})
    try:
        assert proc.wire.reply()[0] == 220  # the spool is only needed per message
        proc.wire.expect("HELO x", 250)
        proc.wire.expect("MAIL FROM:<a@example.org>", 250)
        proc.wire.expect("RCPT TO:<b@example.org>", 250)
        reply = proc.wire.message(b"Subject: x\r\n\r\nx\r\n")
        assert reply.startswith(b"451 4.3.0 ") and b"no-such-spool" in reply
        proc.wire.expect("QUIT", 221)
        rc, _, err = proc.finish()
        assert (rc, err) == (0, b"")
    finally:
        proc.proc.kill()
        proc.proc.wait()


def test_bad_config_gets_421_and_exit_78() -> None:
    proc = BsProcess(env={"MAX_MESSAGE_SIZE": "lots"})
    rc, out, err = proc.finish()
    assert rc == 78
    assert out.startswith(b"421 4.3.0 mssendmail: MAX_MESSAGE_SIZE=") and out.endswith(b"\r\n")
    assert err.count(b"\n") == 1 and err.startswith(b"mssendmail: ")


def test_killed_client_mid_message_queues_nothing(bs: BsProcess, spool: Spool) -> None:
    bs.wire.reply()
    bs.wire.expect("HELO x", 250)
    bs.wire.expect("MAIL FROM:<a@example.org>", 250)
    bs.wire.expect("RCPT TO:<b@example.org>", 250)
    bs.wire.expect("DATA", 354)
    bs.wire.send(b"Subject: cut\r\n\r\nhalf a mess")
    rc, _, err = bs.finish()  # stdin closes: the client died
    assert (rc, err) == (0, b"")
    assert maildrop_names(spool) == []


def test_whole_session_from_a_regular_file(tmp_path: Path, spool: Spool) -> None:
    session = tmp_path / "session.smtp"
    session.write_bytes(
        b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"Subject: from a file\r\n\r\n..x\r\n.\r\nQUIT\r\n"
    )
    with open(session, "rb") as stdin:
        proc = BsProcess(stdin=stdin)
        rc, out, err = proc.finish()
    assert (rc, err) == (0, b"")
    replies = out.split(b"\r\n")
    assert [r[:3] for r in replies[:-1]] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    _, message = read_record(spool, queued_id(replies[5]))
    assert split_received(message)[1] == b"Subject: from a file\r\n\r\n.x\r\n"


def test_sigterm_ends_the_session_with_75_and_one_line(bs: BsProcess, spool: Spool) -> None:
    bs.wire.reply()
    bs.wire.expect("HELO x", 250)
    bs.wire.expect("MAIL FROM:<a@example.org>", 250)
    bs.wire.expect("RCPT TO:<b@example.org>", 250)
    bs.wire.expect("DATA", 354)
    bs.wire.send(b"Subject: unfinished\r\n\r\n")
    bs.proc.send_signal(signal.SIGTERM)
    rc, _, err = bs.finish()
    assert rc == 75
    assert err.count(b"\n") == 1 and b"ended by SIGTERM" in err
    assert maildrop_names(spool) == []
