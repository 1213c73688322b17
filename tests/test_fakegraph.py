"""The fake itself: it must be as strict as Graph, or the other tests prove nothing."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakegraph import MAX_BODY, FakeGraph, Fault, running

MAILBOX = "relay@example.com"
GOOD = b"From: a@example.com\r\nTo: Ops <ops@example.com>\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(tmp_path / "fake", monkeypatch, out_dir=tmp_path / "out") as server:
        yield server


def get_token(fake: FakeGraph, secret: str | None = None) -> requests.Response:
    return requests.post(
        f"{fake.url}/{fake.tenant}/oauth2/v2.0/token",
        data={
            "client_id": fake.client_id,
            "client_secret": fake.secret if secret is None else secret,
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=5,
    )


def send(
    fake: FakeGraph,
    body: bytes,
    token: str | None,
    content_type: str = "text/plain",
    session: requests.Session | None = None,
    mailbox: str = MAILBOX,
) -> requests.Response:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return (session or requests).post(
        f"{fake.url}/v1.0/users/{mailbox}/sendMail", data=body, headers=headers, timeout=5
    )


@pytest.fixture
def token(fake: FakeGraph) -> str:
    reply = get_token(fake)
    assert reply.status_code == 200
    return str(reply.json()["access_token"])


def code_of(reply: requests.Response) -> str:
    return str(reply.json()["error"]["code"])


def test_wrong_secret_is_invalid_client(fake: FakeGraph) -> None:
    reply = get_token(fake, "nope")
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"


def test_accepts_and_records(fake: FakeGraph, token: str, tmp_path: Path) -> None:
    reply = send(fake, base64.b64encode(GOOD), token)
    assert reply.status_code == 202
    assert reply.content == b""
    [msg] = fake.messages
    assert (msg.mailbox, msg.mime, msg.recipients) == (MAILBOX, GOOD, ["ops@example.com"])
    assert msg.request_id == reply.headers["request-id"]
    assert (tmp_path / "out" / "messages" / "0000001.eml").read_bytes() == GOOD
    line = json.loads((tmp_path / "out" / "messages.jsonl").read_text())
    assert line["request_id"] == msg.request_id and line["subject"] == "hi"
    requests_log = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    assert json.loads(requests_log[-1])["status"] == 202


def test_base64_with_line_breaks_is_accepted(fake: FakeGraph, token: str) -> None:
    wrapped = base64.encodebytes(GOOD * 10)  # 76-column lines, as many clients send
    assert send(fake, wrapped, token).status_code == 202


@pytest.mark.parametrize(
    ("token_kind", "content_type", "body", "status", "code"),
    [
        ("none", "text/plain", base64.b64encode(GOOD), 401, "InvalidAuthenticationToken"),
        ("forged", "text/plain", base64.b64encode(GOOD), 401, "InvalidAuthenticationToken"),
        ("good", "application/json", base64.b64encode(GOOD), 415, "UnsupportedMediaType"),
        ("good", "text/plain", GOOD, 400, "ErrorMimeContentInvalidBase64String"),
        ("good", "text/plain", b"", 400, "ErrorMimeContentInvalidBase64String"),
        (
            "good",
            "text/plain",
            base64.b64encode(b"Subject: none\r\n\r\nx"),
            400,
            "ErrorInvalidRecipients",
        ),
        (
            "good",
            "text/plain",
            base64.b64encode(b"To: root\r\nSubject: x\r\n\r\nx"),
            400,
            "ErrorInvalidRecipients",
        ),
        (
            "good",
            "text/plain",
            base64.b64encode(b"To: a@example.com\r\nCc: www-data\r\n\r\nx"),
            400,
            "ErrorInvalidRecipients",
        ),
        ("good", "text/plain", b"A" * (MAX_BODY + 4), 413, "RequestEntityTooLarge"),
    ],
)
def test_strict_rejections(
    fake: FakeGraph,
    token: str,
    token_kind: str,
    content_type: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    use = {"none": None, "forged": token[:-4] + "AAAA", "good": token}[token_kind]
    reply = send(fake, body, use, content_type)
    assert reply.status_code == status
    assert code_of(reply) == code
    assert reply.json()["error"]["innerError"]["request-id"] == reply.headers["request-id"]
    assert fake.messages == []


def test_bcc_only_is_enough(fake: FakeGraph, token: str) -> None:
    body = base64.b64encode(b"Bcc: hidden@example.com\r\nSubject: x\r\n\r\nx")
    assert send(fake, body, token).status_code == 202
    assert fake.messages[0].recipients == ["hidden@example.com"]


def test_missing_role_is_access_denied(fake: FakeGraph) -> None:
    fake.roles = ["User.Read.All"]
    tok = get_token(fake).json()["access_token"]
    reply = send(fake, base64.b64encode(GOOD), tok)
    assert (reply.status_code, code_of(reply)) == (403, "ErrorAccessDenied")


def test_expired_and_revoked_tokens(fake: FakeGraph) -> None:
    fake.token_lifetime = 1
    short = get_token(fake).json()["access_token"]
    time.sleep(1.1)
    assert send(fake, base64.b64encode(GOOD), short).status_code == 401
    fake.token_lifetime = 3599
    tok = get_token(fake).json()["access_token"]
    fake.revoke_tokens()
    assert send(fake, base64.b64encode(GOOD), tok).status_code == 401


def test_send_as_denied_and_unknown_mailbox(fake: FakeGraph, token: str) -> None:
    fake.send_as_denied = {"ceo@example.com"}
    fake.mailboxes = {MAILBOX, "ceo@example.com"}
    body = base64.b64encode(GOOD)
    reply = send(fake, body, token, mailbox="ceo@example.com")
    assert (reply.status_code, code_of(reply)) == (403, "ErrorSendAsDenied")
    reply = send(fake, body, token, mailbox="nobody@example.com")
    assert (reply.status_code, code_of(reply)) == (404, "ErrorInvalidUser")
    assert send(fake, body, token).status_code == 202


def test_scripted_faults_in_order(fake: FakeGraph, token: str) -> None:
    fake.script(
        Fault.error(429, retry_after=7), Fault.error(503, "ServiceUnavailable"), Fault.reset()
    )
    body = base64.b64encode(GOOD)
    first = send(fake, body, token)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert code_of(first) == "ApplicationThrottled"
    assert send(fake, body, token).status_code == 503
    with pytest.raises(requests.ConnectionError):
        send(fake, body, token)
    assert send(fake, body, token).status_code == 202
    assert fake.statuses() == [429, 503, 0, 202]


def test_hang_then_close(fake: FakeGraph, token: str) -> None:
    fake.script(Fault.hang(0.5))
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        send(fake, base64.b64encode(GOOD), token)
    assert time.monotonic() - started >= 0.5
    assert fake.messages == []


def test_latency_and_max_in_flight(fake: FakeGraph, token: str) -> None:
    fake.latency = 0.2
    body = base64.b64encode(GOOD)
    threads = [threading.Thread(target=send, args=(fake, body, token)) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.2
    assert fake.max_in_flight == 4  # all four overlapped: concurrent, not serialised
    assert fake.max_in_flight_per_mailbox == {MAILBOX: 4}


def test_token_faults(fake: FakeGraph) -> None:
    fake.script_token(Fault.error(503, retry_after=2))
    reply = get_token(fake)
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
    assert get_token(fake).status_code == 200


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_capacity_over_200_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Server CPU per request, measured in its own process: robust on a loaded CI box."""
    with standalone(tmp_path, monkeypatch, "--no-store") as (proc, info, session):
        tok = fetch_token(session, info)
        body = base64.b64encode(b"To: a@example.com\r\nSubject: x\r\n\r\n" + b"x" * 4000)
        url = f"{info['url']}/v1.0/users/{MAILBOX}/sendMail"
        headers = {"Authorization": f"Bearer {tok}", "Content-Type": "text/plain"}
        count, workers = 400, 4

        def run() -> None:
            own = requests.Session()
            for _ in range(count // workers):
                assert own.post(url, data=body, headers=headers, timeout=10).status_code == 202

        threads = [threading.Thread(target=run) for _ in range(workers)]
        cpu_before = _cpu_seconds(proc.pid)
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        cpu = _cpu_seconds(proc.pid) - cpu_before
        assert session.get(f"{info['url']}/_fake/state", timeout=5).json()["messages"] == count
    per_request = cpu / count
    print(f"fake: {count / wall:.0f} req/s wall, {per_request * 1000:.2f} ms CPU per request")
    assert per_request < 1 / 250, f"{per_request * 1000:.2f} ms CPU per request"


@contextlib.contextmanager
def standalone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any], requests.Session]]:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakegraph",
            "--cert-dir",
            str(tmp_path / "certs"),
            "--out-dir",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        # requests lets these variables override Session.verify.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", info["ca"])
        monkeypatch.setenv("CURL_CA_BUNDLE", info["ca"])
        yield proc, info, requests.Session()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def fetch_token(session: requests.Session, info: dict[str, Any]) -> str:
    reply = session.post(
        f"{info['url']}/{info['tenant']}/oauth2/v2.0/token",
        data={
            "client_id": info["client_id"],
            "client_secret": info["secret"],
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=5,
    )
    return str(reply.json()["access_token"])


def test_standalone_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with standalone(tmp_path, monkeypatch) as (_proc, info, session):
        assert json.loads((tmp_path / "certs" / "fake.json").read_text()) == info
        tok = fetch_token(session, info)
        control = session.post(
            f"{info['url']}/_fake/script",
            json={"graph": [{"kind": "error", "status": 503, "retry_after": 1}]},
            timeout=5,
        )
        assert control.json()["pending_faults"] == 1
        url = f"{info['url']}/v1.0/users/{MAILBOX}/sendMail"
        headers = {"Authorization": f"Bearer {tok}", "Content-Type": "text/plain"}
        body = base64.b64encode(GOOD)
        assert session.post(url, data=body, headers=headers, timeout=5).status_code == 503
        assert session.post(url, data=body, headers=headers, timeout=5).status_code == 202
        state = session.get(f"{info['url']}/_fake/state", timeout=5).json()
        assert state["messages"] == 1
        assert (out / "messages" / "0000001.eml").read_bytes() == GOOD
        assert len((out / "requests.jsonl").read_text().splitlines()) >= 4
    assert json.loads((out / "messages.jsonl").read_text())["n"] == 1
