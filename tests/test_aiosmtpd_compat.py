"""One test per aiosmtpd private member that mssendmail uses (smtp/aiosmtpd_compat.py).

Each fails with the member's name when an aiosmtpd upgrade removes or changes it;
then adapt mssendmail/smtp/aiosmtpd_compat.py (and only it) before raising the pin.
"""

from __future__ import annotations

import asyncio
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from mssendmail.smtp import aiosmtpd_compat

COMPAT = Path(aiosmtpd_compat.__file__)


def fail(member: str, why: str) -> str:
    return (
        f"aiosmtpd {aiosmtpd.__version__}: SMTP.{member} {why}; "
        "adapt mssendmail/smtp/aiosmtpd_compat.py before raising the pin in pyproject.toml"
    )


class Handler:
    pass


def make(**kwargs: object) -> SMTP:
    async def build() -> SMTP:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # auth_required without TLS warns
            return SMTP(Handler(), hostname="test.example", **kwargs)  # type: ignore[arg-type]

    return asyncio.run(build())


def test_the_member_list_is_what_the_adapter_touches() -> None:
    used = set(re.findall(r"server\.(_\w+)", COMPAT.read_text()))
    assert used == set(aiosmtpd_compat.PRIVATE_MEMBERS)


def test__auth_required() -> None:
    assert hasattr(make(), "_auth_required"), fail("_auth_required", "is gone")
    assert aiosmtpd_compat.auth_required(make(auth_required=True, auth_require_tls=False))
    assert not aiosmtpd_compat.auth_required(make()), fail("_auth_required", "changed meaning")


def test__strip_command_keyword() -> None:
    server = make()
    assert callable(getattr(server, "_strip_command_keyword", None)), fail(
        "_strip_command_keyword", "is gone"
    )
    assert aiosmtpd_compat.strip_command_keyword(server, "FROM:", "from: <a@b.example>") == (
        "<a@b.example>"
    ), fail("_strip_command_keyword", "changed")
    assert aiosmtpd_compat.strip_command_keyword(server, "FROM:", "TO:<a@b.example>") is None


def test__getaddr() -> None:
    server = make()
    assert callable(getattr(server, "_getaddr", None)), fail("_getaddr", "is gone")
    address, rest = aiosmtpd_compat.getaddr(server, "<a@b.example> SIZE=10")
    assert (address, rest) == ("a@b.example", "SIZE=10"), fail("_getaddr", "changed")
    # smtp_MAIL relies on the null sender coming back as "<>".
    assert aiosmtpd_compat.getaddr(server, "<>") == ("<>", ""), fail("_getaddr", "changed")


@pytest.fixture
def connected() -> Iterator[tuple[SMTP, asyncio.AbstractEventLoop]]:
    """A real aiosmtpd session on a socket pair, as -bs and mssendmail-smtpd run it."""
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    server = SMTP(Handler(), hostname="test.example", loop=loop)  # type: ignore[arg-type]

    async def connect() -> None:
        await loop.connect_accepted_socket(lambda: server, ours)
        await asyncio.sleep(0)

    loop.run_until_complete(connect())
    try:
        yield server, loop
    finally:
        theirs.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()


def test__reader(connected: tuple[SMTP, asyncio.AbstractEventLoop]) -> None:
    server, _loop = connected
    reader = getattr(server, "_reader", None)
    assert isinstance(reader, asyncio.StreamReader), fail("_reader", "is not the session reader")
    aiosmtpd_compat.feed_eof(server)
    assert reader.at_eof()


def test__handler_coroutine(connected: tuple[SMTP, asyncio.AbstractEventLoop]) -> None:
    server, loop = connected
    task = getattr(server, "_handler_coroutine", None)
    assert isinstance(task, asyncio.Task), fail("_handler_coroutine", "is not the session task")
    aiosmtpd_compat.cancel_session(server)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert task.cancelled() or task.done()
