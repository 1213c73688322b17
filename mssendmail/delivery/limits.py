"""Bounds on the work one message may cause, checked before any Graph request.

Every queued message is hostile input. The stdlib parsers recurse on nested
RFC 5322 comments (``email.utils.getaddresses`` and the header parser of
``email.policy.default`` both do), so a From: of 600 nested ``(`` raised
RecursionError in the worker. Values are checked here first, with a plain
loop, and refused when they nest deeper than MAX_COMMENT_DEPTH.

The configurable limits (KEYS) bound the rest: MIME parts, nesting depth,
attachments, To/Cc/Bcc addresses, and Graph requests per large-message
attempt. A message over one is dead-lettered by prepare() with the key
named, before any Graph request; the large-message path checks its request
count after planning, before its first request.
"""

from __future__ import annotations

from dataclasses import dataclass

from mssendmail.config import Config
from mssendmail.errors import ConfigError, DataError

MAX_COMMENT_DEPTH = 20  # RFC 5322 allows nesting; real mail nests one or two deep


class LimitExceeded(DataError):
    """A message is over one of the per-message limits; the message names the limit."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def comments_too_deep(text: str, limit: int = MAX_COMMENT_DEPTH) -> bool:
    """True when a header value's comments nest deeper than `limit`.

    Quoted strings and backslash escapes are skipped, as RFC 5322 reads them.
    """
    if text.count("(") <= limit:
        return False  # the usual case, without a loop
    depth = 0
    quoted = False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"' and not depth:
            quoted = not quoted
        elif not quoted:
            if char == "(":
                depth += 1
                if depth > limit:
                    return True
            elif char == ")" and depth:
                depth -= 1
        i += 1
    return False


def check_comments(what: str, text: str) -> None:
    """Raise LimitExceeded when a value's comments nest deeper than the parsers can take."""
    if comments_too_deep(text):
        raise LimitExceeded(
            "MAX_COMMENT_DEPTH",
            f"{what} has comments nested more than {MAX_COMMENT_DEPTH} deep; "
            "no mail program writes that, so it is refused",
        )


# Per-message limits: config key -> (default, smallest, largest allowed value).
KEYS: dict[str, tuple[int, int, int]] = {
    "MAX_ATTACHMENTS": (250, 1, 100_000),
    "MAX_MIME_PARTS": (1000, 1, 1_000_000),
    "MAX_MIME_DEPTH": (20, 1, 30),
    "MAX_HEADER_RECIPIENTS": (1000, 1, 100_000),
    "MAX_GRAPH_REQUESTS": (500, 3, 1_000_000),
}


@dataclass(frozen=True)
class Limits:
    """The per-message limits of one config; every value names its key on error."""

    attachments: int = KEYS["MAX_ATTACHMENTS"][0]
    mime_parts: int = KEYS["MAX_MIME_PARTS"][0]
    mime_depth: int = KEYS["MAX_MIME_DEPTH"][0]
    header_recipients: int = KEYS["MAX_HEADER_RECIPIENTS"][0]
    graph_requests: int = KEYS["MAX_GRAPH_REQUESTS"][0]

    @classmethod
    def from_config(cls, cfg: Config) -> Limits:
        values = {}
        for key, (_, low, high) in KEYS.items():
            value = cfg.integer(key)
            if not low <= value <= high:
                raise ConfigError(f"{key}={value} is out of range; use {low} to {high}")
            values[key] = value
        return cls(
            attachments=values["MAX_ATTACHMENTS"],
            mime_parts=values["MAX_MIME_PARTS"],
            mime_depth=values["MAX_MIME_DEPTH"],
            header_recipients=values["MAX_HEADER_RECIPIENTS"],
            graph_requests=values["MAX_GRAPH_REQUESTS"],
        )


def over(key: str, count: int, limit: int, what: str) -> LimitExceeded:
    return LimitExceeded(
        key, f"{what}: {count} is over {key}={limit}; raise {key} in the config to send it"
    )


def check_header_recipients(count: int, limits: Limits) -> None:
    if count > limits.header_recipients:
        raise over("MAX_HEADER_RECIPIENTS", count, limits.header_recipients, "To/Cc/Bcc addresses")


def rough_address_count(value: str) -> int:
    """An upper bound on the addresses in a header value, without parsing it."""
    return value.count(",") + 1


def _is_multipart(mime: bytes) -> bool:
    head_end = mime.find(b"\r\n\r\n")
    head = (mime if head_end < 0 else mime[:head_end]).lower()
    return b"multipart/" in head


def check_mime(mime: bytes, limits: Limits) -> None:
    """Count MIME parts, nesting and attachments; LimitExceeded names the first limit hit.

    Plain (non-multipart) messages, the usual cron and app mail, cost one
    search of the header section. A multipart message is parsed with a part
    budget, so a bomb of 60,000 parts costs at most MAX_MIME_PARTS header parses.
    """
    if not _is_multipart(mime):
        return
    from mssendmail.graph.large import PartBudget, attachment_count, parse

    budget = PartBudget(limits.mime_parts, limits.mime_depth)
    root = parse(mime, budget=budget)
    attachments = attachment_count(root)
    if attachments > limits.attachments:
        raise over("MAX_ATTACHMENTS", attachments, limits.attachments, "attachments")
