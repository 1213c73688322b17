"""classify: HTTP status + Graph error code (+ Retry-After) -> delivery error class."""

from __future__ import annotations

import json

import pytest

from mssendmail.errors import (
    ConfigurationFailure,
    DeliveryError,
    PermanentFailure,
    SlowDown,
    TemporaryFailure,
    Throttled,
)
from mssendmail.graph.classify import (
    RETRY_AFTER_CAP,
    classify_http,
    classify_token_error,
    graph_error,
    parse_retry_after,
)


def body(code: str | None, message: str = "text", request_id: str = "rid-body") -> bytes:
    err: dict[str, object] = {"message": message, "innerError": {"request-id": request_id}}
    if code is not None:
        err["code"] = code
    return json.dumps({"error": err}).encode()


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "expected"),
    [
        (400, "ErrorInvalidRecipients", None, PermanentFailure),
        (400, "ErrorMimeContentInvalidBase64String", None, PermanentFailure),
        (413, None, None, PermanentFailure),
        (400, "ErrorMessageSizeExceeded", None, PermanentFailure),
        (403, "ErrorSendAsDenied", None, PermanentFailure),
        (404, "ErrorInvalidUser", None, PermanentFailure),
        (400, "SomethingNew", None, PermanentFailure),
        (403, "ErrorAccessDenied", None, ConfigurationFailure),
        (403, "MailboxNotEnabledForRESTAPI", None, ConfigurationFailure),
        (404, "MailboxNotEnabledForRESTAPI", None, ConfigurationFailure),
        (401, "InvalidAuthenticationToken", None, ConfigurationFailure),
        (401, None, None, ConfigurationFailure),
        (407, None, None, ConfigurationFailure),
        (429, "ErrorExceededMessageLimit", None, SlowDown),
        (403, "ErrorQuotaExceeded", None, SlowDown),
        (429, "ErrorQuotaExceeded", "30", SlowDown),
        (429, "ApplicationThrottled", "10", Throttled),
        (503, "ServiceUnavailable", "5", Throttled),
        (429, "ApplicationThrottled", None, TemporaryFailure),
        (503, None, None, TemporaryFailure),
        (500, "InternalServerError", None, TemporaryFailure),
        (502, None, "3", TemporaryFailure),
        (504, None, None, TemporaryFailure),
        (408, None, None, TemporaryFailure),
        (200, None, None, TemporaryFailure),
    ],
)
def test_class_by_status_and_code(
    status: int, code: str | None, retry_after: str | None, expected: type[DeliveryError]
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    err = classify_http(status, body(code), headers)
    assert type(err) is expected
    assert err.status == status
    assert err.code == code


def test_plain_temporary_is_not_a_throttle() -> None:
    # Throttled is a subclass of TemporaryFailure; the exact type is what matters.
    assert type(classify_http(429, b"", {})) is TemporaryFailure


def test_branches_on_code_never_on_message() -> None:
    # The message text claims one thing, the code another: the code wins.
    err = classify_http(403, body("ErrorAccessDenied", "ErrorSendAsDenied quota throttled"), {})
    assert isinstance(err, ConfigurationFailure)
    err = classify_http(403, body("ErrorSendAsDenied", "Access is denied"), {})
    assert isinstance(err, PermanentFailure)


def test_keeps_status_code_request_id_and_retry_after() -> None:
    err = classify_http(
        429,
        body("ApplicationThrottled", "MailboxConcurrency limit"),
        {"request-id": "rid-header", "Retry-After": "12"},
        mailbox="relay@example.com",
    )
    assert isinstance(err, Throttled)
    assert (err.status, err.code, err.request_id, err.retry_after) == (
        429,
        "ApplicationThrottled",
        "rid-header",
        12.0,
    )
    assert "relay@example.com" in str(err)
    assert "MailboxConcurrency limit" in str(err)


def test_request_id_falls_back_to_the_body() -> None:
    err = classify_http(400, body("ErrorInvalidRecipients", request_id="rid-b"), {})
    assert err.request_id == "rid-b"


def test_message_is_one_trimmed_line() -> None:
    err = classify_http(400, body("X", "line one\r\nline two\x1b[31m" + "y" * 1000), {})
    text = str(err)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert len(text) < 500


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b'{"error": "flat"}', b'{"error": {"code": 5}}', b"\xff\xfe"],
)
def test_hostile_or_empty_bodies_fall_back_to_status(raw: bytes) -> None:
    assert graph_error(raw)[0] is None
    assert type(classify_http(503, raw, {})) is TemporaryFailure
    assert type(classify_http(403, raw, {})) is PermanentFailure


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999999") == RETRY_AFTER_CAP
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now=now) == 60.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:12:20 GMT", now=now) == 0.0


def test_http_date_retry_after_makes_a_throttle() -> None:
    err = classify_http(
        503, b"", {"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, now=1_700_000_000.0
    )
    assert isinstance(err, Throttled)
    assert err.retry_after == 30.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("invalid_client", ConfigurationFailure),
        ("unauthorized_client", ConfigurationFailure),
        ("invalid_request", ConfigurationFailure),
        ("invalid_scope", ConfigurationFailure),
        ("something_else", ConfigurationFailure),
        ("temporarily_unavailable", TemporaryFailure),
        ("server_error", TemporaryFailure),
    ],
)
def test_token_errors(error: str, expected: type[DeliveryError]) -> None:
    err = classify_token_error(
        {
            "error": error,
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x",
            "correlation_id": "corr-1",
        }
    )
    assert type(err) is expected
    assert err.code == error
    assert err.request_id == "corr-1"
    assert "AADSTS7000215" in str(err)
    assert "Trace ID" not in str(err)


def test_token_error_with_busy_status_is_temporary() -> None:
    err = classify_token_error({"error": "invalid_request"}, status=503, retry_after=9.0)
    assert type(err) is TemporaryFailure
    assert err.retry_after == 9.0


def test_token_error_without_fields() -> None:
    err = classify_token_error({})
    assert isinstance(err, ConfigurationFailure)
    assert err.code == "unknown_error"
