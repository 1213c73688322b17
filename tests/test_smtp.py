"""mssendmail.smtp.protocol: the shared aiosmtpd server and queueing handler, in process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtpwire import (
    Wire,
    connect,
    maildrop_names,
    queued_id,
    read_record,
    serving,
    split_received,
)

from mssendmail.errors import SpoolError
from mssendmail.smtp import protocol as smtp
from mssendmail.smtp.protocol import (
    QueueHandler,
    Server,
    received_header,
    valid_address,
    with_enhanced_code,
)
from mssendmail.spool.layout import Spool
from mssendmail.submission.writer import Submission

MAX = 8192


@pytest.fixture
def handler(spool: Spool) -> QueueHandler:
    return QueueHandler(spool, MAX, "smtpd", "mx.test")


@pytest.fixture
def wire(handler: QueueHandler) -> Iterator[Wire]:
    with serving(lambda: Server(handler)) as address, connect(address) as w:
        code, lines = w.reply()
        assert code == 220 and lines[0].startswith(b"220 mx.test ")
        yield w


def ehlo(w: Wire) -> list[bytes]:
    return w.expect("EHLO client.test", 250)


def test_enhanced_codes_added_once() -> None:
    assert with_enhanced_code("250 OK") == "250 2.0.0 OK"
    assert (
        with_enhanced_code("503 Error: need RCPT command") == "503 5.5.1 Error: need RCPT command"
    )
    assert (
        with_enhanced_code("552 Error: Too much mail data") == "552 5.3.4 Error: Too much mail data"
    )
    assert with_enhanced_code("451-first") == "451-4.0.0 first"
    assert with_enhanced_code("235 2.7.0 Authentication successful") == (
        "235 2.7.0 Authentication successful"
    )
    assert with_enhanced_code("220 host ESMTP") == "220 host ESMTP"
    assert with_enhanced_code("354 End data") == "354 End data"


@pytest.mark.parametrize("address", ["a@b.example", "root", '"a@b"@c.example', "a+tag@b"])
def test_valid_addresses(address: str) -> None:
    assert valid_address(address)


# Quoted local parts with spaces are valid RFC 5321 but Exchange refuses them: refuse early.
@pytest.mark.parametrize(
    "address", ["", "<>", "a@", "@b", "a@b@c", "a b@c", '"x y"@b', "a\x7f@b", "x" * 321]
)
def test_invalid_addresses(address: str) -> None:
    assert not valid_address(address)


def test_received_header_is_folded_crlf_and_names_no_recipient() -> None:
    header = received_header(
        helo="evil (x); y\tz", client="[127.0.0.1]", hostname="mx", protocol="ESMTPA", queue_id="q"
    )
    lines = header.split(b"\r\n")
    assert lines[0] == b"Received: from evil??x???y?z ([127.0.0.1])"
    assert lines[1] == b"\tby mx (mssendmail) with ESMTPA id q;"
    assert lines[2].startswith(b"\t") and lines[3] == b""
    assert b"for" not in header


def test_ehlo_advertises_extensions_without_auth(wire: Wire) -> None:
    lines = ehlo(wire)
    keywords = {line[4:].split(b" ")[0] for line in lines[1:]}
    assert {b"PIPELINING", b"SIZE", b"8BITMIME", b"ENHANCEDSTATUSCODES"} <= keywords
    assert f"250-SIZE {MAX}".encode() in lines
    assert b"AUTH" not in keywords and b"STARTTLS" not in keywords
    assert wire.expect("AUTH PLAIN AGFiAGM=", 502)[0].startswith(b"502 5.5.1 ")


def test_message_stored_exactly_after_received_header(wire: Wire, spool: Spool) -> None:
    ehlo(wire)
    wire.expect("MAIL FROM:<sender@example.org> BODY=8BITMIME", 250)
    wire.expect("RCPT TO:<to@example.net>", 250)
    wire.expect("RCPT TO:<root>", 250)
    body = b"Subject: t\r\n\r\n..leading dot\r\n8bit \xe4\xf6\r\n" + b"L" * 5000 + b"\r\n"
    qid = queued_id(wire.message(body))
    envelope, message = read_record(spool, qid)
    received, rest = split_received(message)
    assert rest == body.replace(b"\r\n..", b"\r\n.")
    assert f" id {qid};".encode() in received and b"with ESMTP " in received
    assert envelope["sender"] == "sender@example.org"
    assert envelope["recipients"] == ["to@example.net", "root"]
    assert envelope["source"] == "smtpd" and envelope["from_headers"] is False
    assert maildrop_names(spool) == [qid]  # no temp file left behind


def test_several_messages_with_and_without_rset(wire: Wire, spool: Spool) -> None:
    ehlo(wire)
    ids = []
    for n in range(3):
        wire.expect("MAIL FROM:<s@example.org>", 250)
        wire.expect(f"RCPT TO:<r{n}@example.org>", 250)
        ids.append(queued_id(wire.message(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())))
        if n == 1:
            wire.expect("RSET", 250)
    wire.expect("MAIL FROM:<s@example.org>", 250)
    wire.expect("RSET", 250)  # an abandoned transaction queues nothing
    assert wire.expect("QUIT", 221)[0].startswith(b"221 2.0.0")
    assert len(set(ids)) == 3 and maildrop_names(spool) == sorted(ids)
    for n, qid in enumerate(ids):
        envelope, message = read_record(spool, qid)
        assert envelope["recipients"] == [f"r{n}@example.org"]
        assert split_received(message)[1] == f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()


def test_null_sender_is_queued_as_empty(wire: Wire, spool: Spool) -> None:
    ehlo(wire)
    wire.expect("MAIL FROM:<>", 250)
    wire.expect("RCPT TO:<a@example.org>", 250)
    envelope, _ = read_record(spool, queued_id(wire.message(b"x\r\n")))
    assert envelope["sender"] == ""


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL FROM:<a@@b>", 501),
        ("MAIL FROM:<a b c>", 501),
        ("MAIL FROM:<a@b> SIZE=99999999", 552),
        ("MAIL FROM:<a@b> SIZE=12", 250),
        ("DATA", 503),
        ("RCPT TO:<a@b>", 503),
        ("FROBNICATE", 500),
        ("VRFY someone@example.org", 252),
        ("NOOP", 250),
    ],
)
def test_replies_before_a_transaction(wire: Wire, command: str, code: int) -> None:
    ehlo(wire)
    lines = wire.expect(command, code)
    assert lines[-1][4:5].isdigit(), f"no enhanced status code in {lines!r}"


@pytest.mark.parametrize("address", ["<x@@y>", "<>", "<a@>", "<@b>"])
def test_bad_recipient_501_then_no_rcpt_503(wire: Wire, spool: Spool, address: str) -> None:
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    assert wire.expect(f"RCPT TO:{address}", 501)[0].startswith(b"501 5.1.3 ")
    wire.expect("DATA", 503)
    assert maildrop_names(spool) == []


def test_too_big_552_and_session_continues(wire: Wire, spool: Spool) -> None:
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    reply = wire.message(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200)
    assert reply.startswith(b"552 5.3.4 ")
    assert maildrop_names(spool) == []
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    queued_id(wire.message(b"Subject: small\r\n\r\nok\r\n"))


def test_451_when_the_spool_is_missing(tmp_path: Path) -> None:
    handler = QueueHandler(Spool(str(tmp_path / "nonexistent")), MAX, "smtpd", "mx.test")
    with serving(lambda: Server(handler)) as address, connect(address) as w:
        w.reply()
        ehlo(w)
        w.expect("MAIL FROM:<a@example.org>", 250)
        w.expect("RCPT TO:<b@example.org>", 250)
        reply = w.message(b"Subject: x\r\n\r\nx\r\n")
        assert reply.startswith(b"451 4.3.0 ") and b"try again later" in reply


def test_451_when_commit_fails_and_nothing_is_left(
    wire: Wire, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(self: Submission, envelope: object) -> str:
        self.abort()
        raise SpoolError("cannot queue the message: No space left on device; free disk space")

    monkeypatch.setattr(Submission, "commit", failing_commit)
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    reply = wire.message(b"x\r\n")
    assert reply.startswith(b"451 4.3.0 ") and b"No space left" in reply
    assert maildrop_names(spool) == []


def test_reply_250_comes_only_after_the_record_is_committed(
    wire: Wire, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    real_commit = Submission.commit

    def watching_commit(self: Submission, envelope: dict[str, object]) -> str:
        qid = real_commit(self, envelope)
        seen.append(maildrop_names(spool))
        return qid

    monkeypatch.setattr(Submission, "commit", watching_commit)
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    qid = queued_id(wire.message(b"x\r\n"))
    assert seen == [[qid]]


def test_too_many_recipients_452(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp, "MAX_RECIPIENTS", 2)
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    wire.expect("RCPT TO:<c@example.org>", 250)
    assert wire.expect("RCPT TO:<d@example.org>", 452)[0].startswith(b"452 4.5.3 ")


def test_end_of_input_inside_data_queues_nothing(wire: Wire, spool: Spool) -> None:
    ehlo(wire)
    wire.expect("MAIL FROM:<a@example.org>", 250)
    wire.expect("RCPT TO:<b@example.org>", 250)
    wire.expect("DATA", 354)
    wire.send(b"Subject: cut\r\n\r\npartial")
    sock = socket.socket(fileno=wire.writer.fileno())  # type: ignore[attr-defined]
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()
    assert wire.reader.readline() in (b"", b"421 4.4.2 End of input; closing\r\n")
    assert maildrop_names(spool) == []


def test_whole_session_sent_before_reading_is_answered_in_order(wire: Wire, spool: Spool) -> None:
    wire.send(
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"Subject: pipelined\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    codes = [wire.reply()[0] for _ in range(7)]
    assert codes == [250, 250, 250, 354, 250, 250, 221]
    assert len(maildrop_names(spool)) == 1
