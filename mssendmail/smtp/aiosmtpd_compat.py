"""The one place that touches aiosmtpd's private members.

smtp/protocol.py's ``Server`` subclasses aiosmtpd's ``SMTP`` and needs five
of its internals to answer the way Postfix does:

- ``_auth_required`` and ``_strip_command_keyword`` / ``_getaddr``: to check
  a MAIL FROM / RCPT TO address with aiosmtpd's own parsing before
  aiosmtpd replies, and say 530 first to an unauthenticated client;
- ``_reader``: to half-close on end of input, so that ``mssendmail -bs <
  session.txt`` answers every command already in the buffer;
- ``_handler_coroutine``: to end the session quietly on end of input in
  the middle of DATA.

pyproject.toml pins aiosmtpd below 1.5 (CI tests 1.4.6), and
tests/test_aiosmtpd_compat.py fails loudly when an upgrade removes any of them.
"""

from __future__ import annotations

from aiosmtpd.smtp import SMTP

# tests/test_aiosmtpd_compat.py checks each one against the installed aiosmtpd.
PRIVATE_MEMBERS = (
    "_auth_required",
    "_strip_command_keyword",
    "_getaddr",
    "_reader",
    "_handler_coroutine",
)


def auth_required(server: SMTP) -> bool:
    """True if the server refuses mail commands before AUTH."""
    return bool(server._auth_required)


def strip_command_keyword(server: SMTP, keyword: str, arg: str) -> str | None:
    """The argument after "FROM:"/"TO:", or None if the keyword is missing."""
    rest: str | None = server._strip_command_keyword(keyword, arg)
    return rest


def getaddr(server: SMTP, text: str) -> tuple[str | None, str | None]:
    """(address, rest) as aiosmtpd parses a MAIL/RCPT argument."""
    address, rest = server._getaddr(text)
    return address, rest


def feed_eof(server: SMTP) -> None:
    """Tell the session's reader that no more input will come."""
    server._reader.feed_eof()


def cancel_session(server: SMTP) -> None:
    """Cancel the task that runs the SMTP session, if it runs."""
    task = server._handler_coroutine
    if task is not None:
        task.cancel()
