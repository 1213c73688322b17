"""Turn Graph and token-endpoint failures into the delivery error classes.

Pure functions, no I/O. Decisions branch on the HTTP status and the Graph
error *code*, never on the human-readable message, which Microsoft changes
and localises. The message is only carried along (trimmed, one line) so an
admin can read it in the log and the dead-letter reason.

| class                | when                                                      |
|----------------------|-----------------------------------------------------------|
| SlowDown             | ErrorExceededMessageLimit, ErrorQuotaExceeded             |
| ConfigurationFailure | ErrorAccessDenied, MailboxNotEnabledForRESTAPI, 401, 407, |
|                      | every token error except the transient ones               |
| PermanentFailure     | ErrorInvalidRecipients, ErrorMimeContentInvalidBase64String,|
|                      | 413, ErrorMessageSizeExceeded, ErrorSendAsDenied, other 4xx|
| Throttled            | 429 or 503 with Retry-After                               |
| TemporaryFailure     | 408, 409, 429, 5xx, network errors, transient token errors|

SECURITY: nothing here ever sees a token or a secret; callers pass only
status, headers and the response body.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from mssendmail.errors import (
    ConfigurationFailure,
    DeliveryError,
    PermanentFailure,
    SlowDown,
    TemporaryFailure,
    Throttled,
)

# Retry-After beyond a day is more likely a bug than advice; the lead's
# backoff and MAX_AGE still apply on top of it.
RETRY_AFTER_CAP = 86400.0
MESSAGE_LIMIT = 300

SLOW_DOWN_CODES = frozenset({"ErrorExceededMessageLimit", "ErrorQuotaExceeded"})
PERMANENT_CODES = frozenset(
    {
        "ErrorInvalidRecipients",
        "ErrorMimeContentInvalidBase64String",
        "ErrorMessageSizeExceeded",
        "ErrorSendAsDenied",
    }
)
CONFIGURATION_CODES = frozenset(
    {
        "ErrorAccessDenied",
        "MailboxNotEnabledForRESTAPI",
        "InvalidAuthenticationToken",
        "Authorization_RequestDenied",
        "AccessDenied",
    }
)

# What the admin should do, appended to the message so the one log line is actionable.
HINTS: dict[str, str] = {
    "ErrorExceededMessageLimit": "the mailbox hit its sending limit; mail is deferred",
    "ErrorQuotaExceeded": "the mailbox is full; free space or raise its quota",
    "ErrorInvalidRecipients": "fix the recipient addresses",
    "ErrorMimeContentInvalidBase64String": "Graph could not decode the message; report a bug",
    "ErrorMessageSizeExceeded": "the message is larger than the mailbox allows",
    "ErrorSendAsDenied": "the app may not send as this mailbox; remove it from ALLOWED_FROM "
    "or allow the app to use it",
    "ErrorAccessDenied": "grant the app Mail.Send (application) with admin consent, and "
    "check any ApplicationAccessPolicy",
    "MailboxNotEnabledForRESTAPI": "the sender needs an Exchange Online mailbox with a licence",
    "InvalidAuthenticationToken": "check TENANT_ID, CLIENT_ID and CLOUD",
    "invalid_client": "check CLIENT_ID and the secret, certificate or federated credential",
    "unauthorized_client": "check CLIENT_ID and that the app exists in TENANT_ID",
    "invalid_scope": "check CLOUD and GRAPH_URL",
    "invalid_request": "check TENANT_ID and CLIENT_ID",
}

# OAuth2 errors that say "try again", not "fix the config".
TRANSIENT_TOKEN_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapse whitespace and control characters; log lines must stay one line."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def graph_error(body: bytes | str | None) -> tuple[str | None, str, str | None]:
    """(code, message, request-id) from a Graph error body; tolerant of anything."""
    if not body:
        return None, "", None
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, "", None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, "", None
    raw_code, raw_message = err.get("code"), err.get("message")
    code = raw_code if isinstance(raw_code, str) and raw_code else None
    message = raw_message if isinstance(raw_message, str) else ""
    inner = err.get("innerError") or err.get("innererror")
    request_id: str | None = None
    if isinstance(inner, dict) and isinstance(inner.get("request-id"), str):
        request_id = str(inner["request-id"])
    return code, message, request_id


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def classify_http(
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str],
    *,
    mailbox: str = "",
    now: float | None = None,
) -> DeliveryError:
    """The error for a non-success Graph response."""
    code, message, body_request_id = graph_error(body)
    request_id = _header(headers, "request-id") or body_request_id
    retry_after = parse_retry_after(_header(headers, "retry-after"), now)
    cls = _class_for(status, code, retry_after)
    text = f"Graph HTTP {status}" + (f" {code}" if code else "")
    if mailbox:
        text += f" for mailbox {one_line(mailbox, 120)}"
    if message:
        text += f": {one_line(message)}"
    hint = HINTS.get(code or "") or _status_hint(status)
    if hint:
        text += f"; {hint}"
    return cls(text, status=status, code=code, request_id=request_id, retry_after=retry_after)


def _class_for(status: int, code: str | None, retry_after: float | None) -> type[DeliveryError]:
    # The code decides first: Graph sends the same status for different problems.
    if code in SLOW_DOWN_CODES:
        return SlowDown
    if code in PERMANENT_CODES:
        return PermanentFailure
    if code in CONFIGURATION_CODES:
        return ConfigurationFailure
    if status in (429, 503) and retry_after is not None:
        return Throttled
    if status == 413:
        return PermanentFailure
    if status in (401, 407):
        return ConfigurationFailure
    if status in (408, 409, 425, 429) or status >= 500:
        return TemporaryFailure
    if 400 <= status < 500:
        return PermanentFailure
    # 1xx/2xx/3xx where 202 was expected: a proxy or captive portal, not Graph.
    return TemporaryFailure


def _status_hint(status: int) -> str:
    if status == 401:
        return "the token was refused twice; check TENANT_ID, CLIENT_ID and CLOUD"
    if status == 407:
        return "the HTTPS proxy wants authentication; fix HTTPS_PROXY"
    if status == 413:
        return "the message is too large for Graph"
    if status == 429 or status >= 500:
        return "Graph is busy or failing; mail stays queued and is retried"
    if status < 400:
        return "an HTTP proxy or portal answered instead of Graph; check HTTPS_PROXY and GRAPH_URL"
    return ""


def classify_token_error(
    result: Mapping[str, Any], *, status: int | None = None, retry_after: float | None = None
) -> DeliveryError:
    """The error for an msal result dict that has no access_token."""
    error = result.get("error")
    error = error if isinstance(error, str) and error else "unknown_error"
    description = result.get("error_description")
    # AADSTS descriptions end in trace and correlation ids over several lines;
    # the first line says what is wrong.
    first = description.splitlines()[0] if isinstance(description, str) and description else ""
    text = f"token request failed: {error}"
    if first:
        text += f": {one_line(first)}"
    cls: type[DeliveryError] = ConfigurationFailure
    if error in TRANSIENT_TOKEN_ERRORS or (status is not None and (status == 429 or status >= 500)):
        cls = TemporaryFailure
        text += "; the identity platform is busy; mail stays queued"
    else:
        text += f"; {HINTS.get(error, 'check the credential settings in the config')}"
    correlation = result.get("correlation_id")
    return cls(
        text,
        status=status,
        code=error,
        request_id=correlation if isinstance(correlation, str) else None,
        retry_after=retry_after,
    )


def network_error(what: str, exc: BaseException) -> TemporaryFailure:
    """A transport-level failure (DNS, refused, reset, timeout, TLS)."""
    return TemporaryFailure(f"{what}: {type(exc).__name__}: {one_line(str(exc))}")


def mark_unknown(exc: DeliveryError, status: int | None) -> DeliveryError:
    """Flag a failed send whose request Graph may have acted on anyway.

    Graph answers 202 before it processes a message, and 5xx, 429 without
    Retry-After and cut connections are reported "even as the backend
    completes delivery": those are unknown outcomes. A 429 with Retry-After
    and every 4xx are refusals. status None is a network error, see
    network_unknown().
    """
    if status is not None and (status >= 500 or (status == 429 and exc.retry_after is None)):
        exc.outcome_unknown = True
    return exc


def network_unknown(exc: BaseException) -> bool:
    """False only when the connection was never made, so no byte reached Graph."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 20:  # a bounded walk of the wrapped causes
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (NewConnectionError, ConnectTimeoutError)):
            return False
        if isinstance(cur, BaseException):
            todo.extend(a for a in cur.args if isinstance(a, BaseException))
            todo.extend(
                x for x in (getattr(cur, "reason", None), cur.__cause__, cur.__context__) if x
            )
    return True
