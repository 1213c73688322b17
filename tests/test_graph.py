"""GraphTransport: the sendMail request, error classes, Retry-After, the 401 refresh.

HTTP is mocked with responses here; the last tests run against the strict
HTTPS fake with real msal to prove the pieces fit.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses

from mssendmail import transport as transports
from mssendmail.config import Config
from mssendmail.errors import (
    ConfigError,
    ConfigurationFailure,
    DeliveryError,
    PermanentFailure,
    SlowDown,
    TemporaryFailure,
    Throttled,
)
from mssendmail.graph.transport import MAX_SENDMAIL_BODY, GraphTransport
from mssendmail.transport import Delivered
from tests.fakegraph import FakeGraph, Fault, running

GRAPH = "https://graph.example.test"
MAILBOX = "relay@example.com"
URL = f"{GRAPH}/v1.0/users/{MAILBOX}/sendMail"
TOKEN_1 = "eyJ0eXAi.TOKEN-ONE-very-secret.sig"
TOKEN_2 = "eyJ0eXAi.TOKEN-TWO-very-secret.sig"
MIME = (
    b"From: Cron Daemon <relay@example.com>\r\nTo: ops@example.com\r\n"
    b"Subject: backup\r\n\r\nall good\r\n"
)


class StubTokens:
    """Hands out TOKEN_1, then TOKEN_2 after a forced refresh; records the calls."""

    def __init__(self) -> None:
        self.current = TOKEN_1
        self.calls: list[tuple[bool, str | None]] = []

    def token(self, force_refresh: bool = False, rejected: str | None = None) -> str:
        self.calls.append((force_refresh, rejected))
        if force_refresh:
            self.current = TOKEN_2
        return self.current


@pytest.fixture
def tokens() -> StubTokens:
    return StubTokens()


@pytest.fixture
def graph(tokens: StubTokens) -> Iterator[GraphTransport]:
    transport = GraphTransport(tokens, GRAPH + "/")
    yield transport
    transport.close()


def graph_error(status: int, code: str, retry_after: str | None = None) -> dict[str, object]:
    headers = {"request-id": f"rid-{status}"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return {
        "status": status,
        "json": {"error": {"code": code, "message": f"message for {code}"}},
        "headers": headers,
    }


@responses.activate
def test_success_posts_base64_text_plain(graph: GraphTransport, tokens: StubTokens) -> None:
    responses.post(URL, status=202, headers={"request-id": "rid-ok"})
    delivered = graph.send(MAILBOX, MIME, "q1")
    assert (delivered.status, delivered.request_id) == (202, "rid-ok")
    [call] = responses.calls
    assert call.request.headers["Content-Type"] == "text/plain"
    assert call.request.headers["Authorization"] == f"Bearer {TOKEN_1}"
    assert base64.b64decode(call.request.body, validate=True) == MIME
    assert tokens.calls == [(False, None)]


@responses.activate
def test_mailbox_is_quoted_in_the_path(graph: GraphTransport) -> None:
    responses.post(f"{GRAPH}/v1.0/users/a%2Bb%2Fx%3F@example.com/sendMail", status=202)
    graph.send("a+b/x?@example.com", MIME, "q1")
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "expected"),
    [
        (400, "ErrorInvalidRecipients", None, PermanentFailure),
        (400, "ErrorMimeContentInvalidBase64String", None, PermanentFailure),
        (413, "RequestEntityTooLarge", None, PermanentFailure),
        (403, "ErrorSendAsDenied", None, PermanentFailure),
        (404, "ErrorInvalidUser", None, PermanentFailure),
        (403, "ErrorAccessDenied", None, ConfigurationFailure),
        (404, "MailboxNotEnabledForRESTAPI", None, ConfigurationFailure),
        (429, "ErrorExceededMessageLimit", None, SlowDown),
        (403, "ErrorQuotaExceeded", None, SlowDown),
        (429, "ApplicationThrottled", "17", Throttled),
        (503, "ServiceUnavailable", "4", Throttled),
        (429, "ApplicationThrottled", None, TemporaryFailure),
        (500, "InternalServerError", None, TemporaryFailure),
        (504, "GatewayTimeout", None, TemporaryFailure),
    ],
)
@responses.activate
def test_error_classes(
    graph: GraphTransport,
    status: int,
    code: str,
    retry_after: str | None,
    expected: type[DeliveryError],
) -> None:
    responses.post(URL, **graph_error(status, code, retry_after))  # type: ignore[arg-type]
    with pytest.raises(DeliveryError) as exc:
        graph.send(MAILBOX, MIME, "q1")
    err = exc.value
    assert type(err) is expected
    assert (err.status, err.code, err.request_id) == (status, code, f"rid-{status}")
    assert err.retry_after == (float(retry_after) if retry_after else None)
    assert len(responses.calls) == 1  # no hidden retries


@responses.activate
def test_401_gets_one_fresh_token_and_an_immediate_retry(
    graph: GraphTransport, tokens: StubTokens
) -> None:
    responses.post(URL, **graph_error(401, "InvalidAuthenticationToken"))  # type: ignore[arg-type]
    responses.post(URL, status=202)
    assert graph.send(MAILBOX, MIME, "q1").status == 202
    assert [c.request.headers["Authorization"] for c in responses.calls] == [
        f"Bearer {TOKEN_1}",
        f"Bearer {TOKEN_2}",
    ]
    assert tokens.calls == [(False, None), (True, TOKEN_1)]


@responses.activate
def test_second_401_is_a_configuration_failure(graph: GraphTransport, tokens: StubTokens) -> None:
    responses.post(URL, **graph_error(401, "InvalidAuthenticationToken"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationFailure) as exc:
        graph.send(MAILBOX, MIME, "q1")
    assert exc.value.status == 401
    assert len(responses.calls) == 2
    assert tokens.calls == [(False, None), (True, TOKEN_1)]


@responses.activate
def test_other_2xx_is_not_success(graph: GraphTransport) -> None:
    responses.post(URL, status=200, body="<html>portal</html>")
    with pytest.raises(TemporaryFailure):
        graph.send(MAILBOX, MIME, "q1")


@pytest.mark.parametrize(
    "exc",
    [
        requests.ConnectionError("connection reset by peer"),
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
        requests.exceptions.SSLError("certificate verify failed"),
    ],
)
@responses.activate
def test_network_errors_are_temporary(graph: GraphTransport, exc: Exception) -> None:
    responses.post(URL, body=exc)
    with pytest.raises(TemporaryFailure) as caught:
        graph.send(MAILBOX, MIME, "q1")
    assert type(caught.value) is TemporaryFailure


@pytest.mark.parametrize(
    "reply",
    [
        graph_error(401, "InvalidAuthenticationToken"),
        graph_error(403, "ErrorAccessDenied"),
        graph_error(500, "InternalServerError"),
        {"body": requests.ConnectionError("boom")},
    ],
)
@responses.activate
def test_token_never_appears_in_error_text(graph: GraphTransport, reply: dict[str, object]) -> None:
    responses.post(URL, **reply)  # type: ignore[arg-type]
    with pytest.raises(DeliveryError) as exc:
        graph.send(MAILBOX, MIME, "q1")
    text = (
        "".join(traceback.format_exception(type(exc.value), exc.value, exc.value.__traceback__))
        + repr(exc.value)
        + repr(graph)
    )
    text += repr(vars(exc.value))
    for secret in ("TOKEN-ONE", "TOKEN-TWO", "Bearer"):
        assert secret not in text


@responses.activate
def test_size_boundary_and_large_branch(
    graph: GraphTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    responses.post(URL, status=202)
    largest = MAX_SENDMAIL_BODY // 4 * 3  # base64 of this is exactly 4 MiB
    assert graph.send(MAILBOX, b"x" * largest, "q1").status == 202
    seen: list[int] = []

    def fake_large(transport: object, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        seen.append(len(mime))
        return Delivered(status=202)

    monkeypatch.setattr("mssendmail.graph.large.send_large", fake_large)
    assert graph.send(MAILBOX, b"x" * (largest + 1), "q2").status == 202
    assert seen == [largest + 1]  # one byte more takes the large-message path
    assert len(responses.calls) == 1  # and never reaches sendMail


def test_empty_mailbox_is_a_configuration_failure(graph: GraphTransport) -> None:
    with pytest.raises(ConfigurationFailure, match="SENDER"):
        graph.send("", MIME, "q1")


def test_timeouts_connect_and_total() -> None:
    t = GraphTransport(StubTokens(), GRAPH)
    assert (t.timeout.connect_timeout, t.timeout.total) == (10.0, 120.0)
    t.close()
    t = GraphTransport(StubTokens(), GRAPH, timeout=3)
    assert (t.timeout.connect_timeout, t.timeout.total) == (1.5, 3)
    t.close()


def test_from_config_needs_a_credential(tmp_path: Path) -> None:
    cfg = Config({"QUEUE_DIR": str(tmp_path), "TRANSPORT": "graph"})
    with pytest.raises(ConfigError, match="CLIENT_SECRET"):
        transports.from_config(cfg)


# -- against the strict fake, with real msal -----------------------------------------


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(tmp_path / "fake", monkeypatch) as server:
        yield server


@pytest.fixture
def live(fake: FakeGraph, tmp_path: Path) -> Iterator[GraphTransport]:
    state = tmp_path / "queue" / "state"
    state.mkdir(parents=True)
    cfg = Config(
        {
            **fake.config(),
            "QUEUE_DIR": str(tmp_path / "queue"),
            "TRANSPORT": "graph",
            "GRAPH_TIMEOUT": "2s",
        }
    )
    transport = transports.from_config(cfg)
    assert isinstance(transport, GraphTransport)
    yield transport
    transport.close()


def test_live_send_revoked_token_and_concurrency(fake: FakeGraph, live: GraphTransport) -> None:
    assert live.send(MAILBOX, MIME, "q1").status == 202
    fake.revoke_tokens()  # the next request carries a token the fake no longer knows
    assert live.send(MAILBOX, MIME, "q2").status == 202
    assert fake.statuses() == [202, 401, 202]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                live.send(MAILBOX, MIME, "qx")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fake.messages) == 42
    assert fake.messages[0].mime == MIME
    assert fake.messages[0].recipients == ["ops@example.com"]
    assert len(fake.token_requests) == 2


def test_live_faults(fake: FakeGraph, live: GraphTransport) -> None:
    fake.script(Fault.error(429, retry_after="3"), Fault.reset(), Fault.hang(10))
    with pytest.raises(Throttled) as exc:
        live.send(MAILBOX, MIME, "q1")
    assert exc.value.retry_after == 3.0
    with pytest.raises(TemporaryFailure):
        live.send(MAILBOX, MIME, "q2")
    started = time.monotonic()
    with pytest.raises(TemporaryFailure):
        live.send(MAILBOX, MIME, "q3")
    assert 1.8 < time.monotonic() - started < 5  # GRAPH_TIMEOUT=2s bounds a hung request
    assert live.send(MAILBOX, MIME, "q4").status == 202
    assert len(fake.messages) == 1


def test_live_strict_fake_rejects_unqualified_recipients(
    fake: FakeGraph, live: GraphTransport
) -> None:
    with pytest.raises(PermanentFailure) as exc:
        live.send(MAILBOX, b"To: root\r\nSubject: x\r\n\r\nbody\r\n", "q1")
    assert exc.value.code == "ErrorInvalidRecipients"
    assert json.loads(json.dumps(fake.state()))["messages"] == 0
