"""End to end: real mssendmail and mssendmail-worker processes, real msal,
and the strict local HTTPS fake of the token endpoint and Graph."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from tests.fakegraph import FakeGraph, Fault, running

BIN = Path(sys.executable).parent
SENDER = "relay@contoso.example"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGraph:
    with running(tmp_path / "fake", monkeypatch) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def setup(tmp_path: Path, spool_dir: Path, fake: FakeGraph) -> Path:
    cfg = tmp_path / "graph.env"
    cfg.write_text(
        fake.config_text()
        + f"QUEUE_DIR={spool_dir}\nSENDER={SENDER}\nALLOWED_FROM=@contoso.example\n"
        "ADMIN_ADDRESS=admin@contoso.example\nRETRY_MIN=1s\nRETRY_MAX=2s\nGRAPH_TIMEOUT=3s\n"
    )
    return cfg


def env_for(cfg: Path, fake: FakeGraph) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSENDMAIL")}
    env.update(fake.env())
    env["MSSENDMAIL_CONFIG"] = str(cfg)
    return env


def sendmail(cfg: Path, fake: FakeGraph, args: list[str], message: bytes) -> None:
    result = subprocess.run(
        [str(BIN / "mssendmail"), *args],
        input=message,
        capture_output=True,
        env=env_for(cfg, fake),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""


def worker_once(cfg: Path, fake: FakeGraph) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mssendmail-worker"), "--once"],
        capture_output=True,
        text=True,
        env=env_for(cfg, fake),
        timeout=120,
    )


def by_subject(fake: FakeGraph) -> dict[str, tuple[str, Message]]:
    out = {}
    for received in fake.messages:
        assert received.mime is not None
        msg = message_from_bytes(received.mime)
        out[str(msg["Subject"])] = (received.mailbox, msg)
    return out


CLIENTS = {
    "cat": (
        [],
        b"From: app@contoso.example\nTo: alice@example.org\nCc: bob@example.org\n"
        b"Bcc: hidden@example.org\nSubject: cat\n\nplain pipe\n",
    ),
    "php": (
        ["-t", "-i"],
        b"To: alice@example.org\r\nSubject: php\r\nFrom: www@contoso.example"
        b"\r\n\r\nbody LF\n.\nafter dot\n",
    ),
    "ruby": (
        ["-i", "-f", "notify@contoso.example", "--", "alice@example.org", "hidden@example.org"],
        b"From: Mastodon <notify@contoso.example>\nTo: alice@example.org\nSubject: ruby\n\nhi\n",
    ),
    "cron": (
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        b"From: root (Cron Daemon)\nTo: root\nSubject: cron\nX-Cron-Env: <SHELL=/bin/sh>\n\n"
        b"output \xc3\xa9\n",
    ),
    "git": (
        ["-i", "alice@example.org", "carol@example.org"],
        b"From: Dev <dev@elsewhere.example>\nTo: alice@example.org\nCc: carol@example.org\n"
        b"Subject: git\n\n---\n patch\n",
    ),
}


def test_client_styles_arrive_with_right_mailbox_headers_and_recipients(
    setup: Path, fake: FakeGraph
) -> None:
    for args, message in CLIENTS.values():
        sendmail(setup, fake, args, message)
    result = worker_once(setup, fake)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    got = by_subject(fake)
    assert set(got) == set(CLIENTS)

    mailbox, msg = got["cat"]
    assert mailbox == "app@contoso.example"  # allowed by ALLOWED_FROM
    assert "hidden@example.org" in str(msg["Bcc"])

    mailbox, msg = got["php"]
    assert mailbox == "www@contoso.example"
    assert b"after dot" in fake.messages[[r.mailbox for r in fake.messages].index(mailbox)].mime

    mailbox, msg = got["ruby"]
    assert mailbox == "notify@contoso.example"
    assert "hidden@example.org" in str(msg["Bcc"])  # envelope-only recipient

    mailbox, msg = got["cron"]
    assert mailbox == SENDER
    assert str(msg["From"]) == f'"Cron Daemon" <{SENDER}>'
    assert "admin@contoso.example" in str(msg["To"])
    assert msg["Date"] and msg["Message-ID"]

    mailbox, msg = got["git"]
    assert mailbox == SENDER  # elsewhere.example is not allowed: rewritten
    assert "dev@elsewhere.example" in str(msg["Reply-To"])
    for received in fake.messages:
        assert received.mime is not None and b"\r\n" in received.mime
        assert b"\n" not in received.mime.replace(b"\r\n", b"")


def test_injected_faults_delay_but_lose_nothing(setup: Path, fake: FakeGraph) -> None:
    fake.script(
        Fault.error(429, retry_after="1"),
        Fault.error(503),
        Fault.reset(),
        Fault.hang(5),
        Fault.error(500),
        Fault.error(502),
        Fault.error(504),
    )
    subjects = [f"m{i}" for i in range(10)]
    for subject in subjects:
        sendmail(
            setup,
            fake,
            ["-i", "alice@example.org"],
            f"To: alice@example.org\nSubject: {subject}\n\nx\n".encode(),
        )
    for _ in range(30):
        result = worker_once(setup, fake)
        assert "Traceback" not in result.stderr
        if len(fake.messages) >= len(subjects):
            break
        time.sleep(0.5)
    assert sorted(by_subject(fake)) == sorted(subjects)
    assert len(fake.messages) == len(subjects)  # none twice
    state = fake.state()
    assert state["pending_faults"] == 0  # every fault was really served
    assert state["max_in_flight"] <= 4


def test_bad_secret_pauses_the_queue_and_dead_letters_nothing(setup: Path, fake: FakeGraph) -> None:
    text = setup.read_text().replace(f"CLIENT_SECRET={fake.secret}", "CLIENT_SECRET=wrong-secret")
    setup.write_text(text)
    sendmail(setup, fake, ["-i", "alice@example.org"], b"Subject: s\n\nx\n")
    result = worker_once(setup, fake)
    assert result.returncode == 75, result.stderr
    assert "wrong-secret" not in result.stderr
    assert fake.messages == []
    spool = Path(text.split("QUEUE_DIR=")[1].split("\n")[0])
    assert os.listdir(spool / "dead") == []
    assert len(os.listdir(spool / "queue")) == 1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_t_bs_and_smtpd_reach_graph_byte_identical(setup: Path, fake: FakeGraph) -> None:
    """The same message through -t, -bs and mssendmail-smtpd arrives at Graph
    byte-identical, up to the Received: header the SMTP paths add."""
    import smtplib

    from tests.smtpwire import split_received

    original = (
        b"From: app@contoso.example\r\nTo: ops@example.org\r\nCc: cc@example.org\r\n"
        b"Subject: same\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\n.leading dot\r\n8bit \xc3\xa4\r\n\r\nlast\r\n"
    )
    rcpts = ["ops@example.org", "cc@example.org"]
    env = env_for(setup, fake)
    sendmail(setup, fake, ["-t", "-i", "-f", "app@contoso.example"], original)
    stuffed = original.replace(b"\r\n.", b"\r\n..")
    session = b"HELO x\r\nMAIL FROM:<app@contoso.example>\r\n"
    session += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
    session += b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n"
    bs = subprocess.run(
        [str(BIN / "mssendmail"), "-bs"], input=session, capture_output=True, env=env, timeout=30
    )
    assert b"queued as" in bs.stdout, bs.stdout
    port = free_port()
    daemon = subprocess.Popen(
        [str(BIN / "mssendmail-smtpd")],
        env={**env, "SMTPD_LISTEN": f"127.0.0.1:{port}"},
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    smtp.sendmail("app@contoso.example", rcpts, original)
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        else:
            raise AssertionError("mssendmail-smtpd did not start")
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
    result = worker_once(setup, fake)
    assert result.returncode == 0, result.stderr
    assert len(fake.messages) == 3

    def normalised(mime: bytes) -> bytes:
        if mime.startswith(b"Received: "):
            mime = split_received(mime)[1]
        # Date and Message-ID were added per message by the worker.
        lines = mime.split(b"\r\n")
        return b"\r\n".join(
            line for line in lines if not line.startswith((b"Date: ", b"Message-ID: "))
        )

    arrived = [normalised(m.mime or b"") for m in fake.messages]
    assert arrived[0] == arrived[1] == arrived[2]
    assert sum(m.mime.count(b"Received: from ") for m in fake.messages if m.mime) == 2
    assert {m.mailbox for m in fake.messages} == {"app@contoso.example"}


# ---------------------------------------------------------------- MIME read right by other decoders

DECODERS_DIR = Path(__file__).parent / "decoders"
DECODERS = {
    "ruby mail gem": (
        ["ruby", str(DECODERS_DIR / "mail_gem.rb")],
        ["ruby", "-e", 'require "mail"'],
    ),
    "perl MIME::Parser": (
        ["perl", str(DECODERS_DIR / "mime_parser.pl")],
        ["perl", "-MMIME::Parser", "-e", "1"],
    ),
}
LINE_5000 = ("Grüße Привет 你好 👋🏽 " * 400)[:5000]
MIME_CASES = {
    # cron: raw UTF-8, no MIME headers, one 5,000-character line.
    "cron ✓ /usr/local/bin/report": (
        ["-FCronDaemon", "-i", "-oem", "root"],
        b"From: root (Cron Daemon)\nTo: root\nSubject: cron \xe2\x9c\x93 /usr/local/bin/report\n"
        b"X-Cron-Env: <SHELL=/bin/sh>\n\n",
        f"report start\n{LINE_5000}\nreport end\n",
        "utf-8",
    ),
    "cron without a locale": (
        ["-i", "root"],
        b"From: root\nTo: root\nSubject: cron without a locale\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=US-ASCII\nContent-Transfer-Encoding: 8bit\n\n",
        "Ошибка: диск заполнен\n",
        "utf-8",
    ),
    "Zoë's legacy script": (
        ["-i", "alice@example.org"],
        b"To: alice@example.org\nSubject: Zo\xc3\xab's legacy script\n\n",
        "Grüße aus Köln, " * 100 + "\n",
        "latin-1",
    ),
}


def decoded_by(command: list[str], path: Path) -> dict[str, str]:
    import json

    result = subprocess.run([*command, str(path)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    doc: dict[str, str] = json.loads(result.stdout)
    return doc


def test_cron_and_other_8bit_mail_arrives_as_mime_every_decoder_reads_right(
    setup: Path, fake: FakeGraph, tmp_path: Path
) -> None:
    from email import policy

    from tests.test_mime import check_delivered

    for args, head, text, charset in MIME_CASES.values():
        sendmail(setup, fake, args, head + text.encode(charset))
    result = worker_once(setup, fake)
    assert result.returncode == 0, result.stderr
    assert "mime_fixed=" in result.stderr
    assert len(fake.messages) == len(MIME_CASES)
    missing = [name for name, (_, check) in DECODERS.items() if not _runs(check)]
    for n, received in enumerate(fake.messages):
        assert received.mime is not None
        subject = str(message_from_bytes(received.mime, policy=policy.default)["Subject"])
        text = MIME_CASES[subject][2]
        check_delivered(received.mime, subject, text)  # the four properties, by Python
        path = tmp_path / f"delivered-{n}.eml"
        path.write_bytes(received.mime)
        for name, (command, _) in DECODERS.items():
            if name in missing:
                continue
            doc = decoded_by(command, path)
            assert doc["subject"] == subject, name
            assert doc["body"].replace("\r\n", "\n") == text, name
    if missing:
        pytest.skip(
            f"not installed: {', '.join(missing)} (.ci/run installs ruby-mail and "
            "libmime-tools-perl as root)"
        )


def _runs(check: list[str]) -> bool:
    import shutil

    found = shutil.which(check[0]) is not None
    return found and subprocess.run(check, capture_output=True).returncode == 0
