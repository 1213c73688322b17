"""The DEAD_LETTER_NOTIFY notice: a short text message about one dead letter.

It goes from SENDER to DEAD_LETTER_NOTIFY through the normal queue, so it is
prepared (aliases resolved, Date added) and retried like any other mail. It
carries the original header section, never the body: the admin needs to know
which mail failed and why, not to read it. It also carries
``X-Mssendmail-Notice: yes`` so that the worker never sends a notice about a
notice that died too (no bounce loops, nullmailer #54/#69), and
``Auto-Submitted: auto-generated`` (RFC 3834) so that vacation responders do
not answer it.

A local user can put the marker header into their own message; all it buys
them is no notice about their own message's failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from typing import Any

from mssendmail.config import Config
from mssendmail.delivery.prepare import (
    clean_name,
    field_name,
    normalise_newlines,
    policy_for,
    split_message,
)
from mssendmail.errors import ConfigError

MARKER = "X-Mssendmail-Notice"
MAX_HEADER_TEXT = 64 * 1024  # a hostile header section must not make a huge notice
_TIME_KEYS = frozenset({"time", "queued", "submitted", "first", "last"})
_MARKER_RE = re.compile(rb"(?im)^x-mssendmail-notice[ \t]*:")


def is_notice(message: bytes) -> bool:
    """Was this message built by build_notice (it carries the marker header)?"""
    if not _MARKER_RE.search(message):
        return False  # the common case, decided without splitting the message
    fields, _ = split_message(normalise_newlines(message))
    return any(field_name(f) == MARKER.lower() for f in fields)


def _original_headers(message: bytes) -> str:
    fields, _ = split_message(normalise_newlines(message))
    text = b"".join(fields).decode("utf-8", errors="replace").replace("\r\n", "\n")
    if len(text) > MAX_HEADER_TEXT:
        text = text[:MAX_HEADER_TEXT] + "\n[... header section cut short ...]\n"
    return text or "(the message has no header section)\n"


def _show(key: str, value: Any) -> str:
    if key in _TIME_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{formatdate(value, localtime=True)} ({value:.0f})"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def notice_text(message: bytes, queue_id: str, reason: Mapping[str, Any]) -> str:
    lines = [
        "mssendmail could not deliver a message and has stopped trying.",
        "The message and this reason are kept in the dead/ area of the spool;",
        f"fix the cause, then 'mssendmail-queue requeue {queue_id}' sends it again.",
        "",
        f"queue id: {queue_id}",
    ]
    lines += [f"{key}: {_show(key, value)}" for key, value in reason.items() if value is not None]
    lines += ["", "Headers of the original message (the body is not included):", ""]
    return "\n".join(lines) + "\n" + _original_headers(message)


def build_notice(
    message: bytes,
    queue_id: str,
    reason: Mapping[str, Any],
    cfg: Config,
    now: float | None = None,
) -> bytes:
    """The notice as a complete message, ready to be queued for DEAD_LETTER_NOTIFY.

    Raises ConfigError when SENDER is unset or DEAD_LETTER_NOTIFY is empty.
    """
    policy = policy_for(cfg)
    to = cfg.get("DEAD_LETTER_NOTIFY")
    if not to:
        raise ConfigError("DEAD_LETTER_NOTIFY is empty; set it to the address for notices")
    notice = EmailMessage(policy=SMTP)
    notice["From"] = Address(clean_name(policy.from_name) or "mssendmail", addr_spec=policy.sender)
    notice["To"] = to
    notice["Subject"] = f"mssendmail: undeliverable message {queue_id}"
    notice["Date"] = formatdate(now, localtime=True)
    token = "".join(c for c in queue_id if c.isalnum()) or "x"
    notice["Message-ID"] = f"<{token}.notice.mssendmail@{policy.sender_domain}>"
    notice["Auto-Submitted"] = "auto-generated"
    notice[MARKER] = "yes"
    notice.set_content(notice_text(message, queue_id, reason))
    return notice.as_bytes()
