"""The dead-letter notice: contents, marker, and no notice about a notice."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from mssendmail.config import Config
from mssendmail.delivery.notice import build_notice, is_notice
from mssendmail.delivery.prepare import prepare
from mssendmail.errors import ConfigError

QID = "6560a1b2c3d4e5f6a7b8"
ORIGINAL = (
    "From: app@example.org\n"
    "To: alice@example.net\n"
    "Subject: Grüße\n"
    "Message-ID: <orig@example.org>\n"
    "\n"
    "the secret body\n"
).encode()
REASON: dict[str, Any] = {
    "time": 1_700_000_000.0,
    "class": "permanent",
    "status": 400,
    "code": "ErrorInvalidRecipients",
    "message": "At least one recipient is not valid.",
    "request_id": "0f1e2d3c-req",
    "attempts": 3,
    "why": "permanent failure",
}


def cfg(**values: str) -> Config:
    base = {"SENDER": "relay@example.com", "DEAD_LETTER_NOTIFY": "admin@example.com"}
    base.update(values)
    return Config(base)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_notice_headers() -> None:
    msg = parse(build_notice(ORIGINAL, QID, REASON, cfg(), now=1_700_000_100.0))
    assert msg["From"].addresses[0].addr_spec == "relay@example.com"
    assert msg["To"] == "admin@example.com"
    assert msg["Subject"] == f"mssendmail: undeliverable message {QID}"
    assert msg["X-Mssendmail-Notice"] == "yes"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"].datetime.timestamp() == 1_700_000_100
    assert msg.get_content_type() == "text/plain"


def test_notice_carries_reason_and_headers_but_not_body() -> None:
    msg = parse(build_notice(ORIGINAL, QID, REASON, cfg()))
    text = msg.get_content()
    for value in ("ErrorInvalidRecipients", "0f1e2d3c-req", "400", "At least one recipient"):
        assert value in text
    assert "attempts: 3" in text
    assert "Subject: Grüße" in text and "Message-ID: <orig@example.org>" in text
    assert "secret body" not in text


def test_notice_uses_from_name() -> None:
    msg = parse(build_notice(ORIGINAL, QID, REASON, cfg(FROM_NAME="Mail relay")))
    assert msg["From"].addresses[0].display_name == "Mail relay"


def test_is_notice() -> None:
    notice = build_notice(ORIGINAL, QID, REASON, cfg())
    assert is_notice(notice)
    assert not is_notice(ORIGINAL)
    # The marker counts only as a header, not when quoted in a body.
    assert not is_notice(b"Subject: x\n\nX-Mssendmail-Notice: yes\n")
    assert is_notice(b"Subject: x\r\nx-mssendmail-notice : yes\r\n\r\nbody\r\n")


def test_notice_about_a_notice_is_recognisable() -> None:
    first = build_notice(ORIGINAL, QID, REASON, cfg())
    # The notice's own prepared form (what a dead notice's queue file holds) still says so.
    prepared = prepare(first, {"recipients": ["admin@example.com"]}, cfg(), "6560a1b2c3d4e5f6a7b9")
    assert is_notice(first) and is_notice(prepared.mime)


def test_notice_to_bare_name_is_resolved_by_prepare() -> None:
    config = cfg(DEAD_LETTER_NOTIFY="root", ADMIN_ADDRESS="ops@example.org")
    notice = build_notice(ORIGINAL, QID, REASON, config)
    prepared = prepare(notice, {"recipients": ["root"]}, config, "6560a1b2c3d4e5f6a7b9")
    assert prepared.recipients == ["ops@example.org"]
    assert parse(prepared.mime)["To"] == "ops@example.org"
    assert prepared.mailbox == "relay@example.com"
    assert prepared.warnings == []


def test_huge_header_section_is_cut() -> None:
    original = b"Subject: x\n" + b"X-Junk: " + b"j" * 500_000 + b"\n\nbody\n"
    notice = build_notice(original, QID, REASON, cfg())
    assert len(notice) < 200_000
    assert "cut short" in parse(notice).get_content()


def test_notice_needs_sender_and_address() -> None:
    with pytest.raises(ConfigError, match="SENDER"):
        build_notice(ORIGINAL, QID, REASON, Config({"DEAD_LETTER_NOTIFY": "a@example.com"}))
    with pytest.raises(ConfigError, match="DEAD_LETTER_NOTIFY"):
        build_notice(ORIGINAL, QID, REASON, cfg(DEAD_LETTER_NOTIFY=""))
