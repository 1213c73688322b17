"""Bounds on the work one message may cause, checked before any Graph request.

Every queued message is hostile input. The stdlib parsers recurse on nested
RFC 5322 comments (``email.utils.getaddresses`` and the header parser of
``email.policy.default`` both do), so a From: of 600 nested ``(`` raised
RecursionError in the worker. Values are checked here first, with a plain
loop, and refused when they nest deeper than MAX_COMMENT_DEPTH.
"""

from __future__ import annotations

from mssendmail.errors import DataError

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
