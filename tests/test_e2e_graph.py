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
