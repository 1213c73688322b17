"""Test helpers for the SMTP tests: a raw reply reader, record access, an in-process server.

smtplib hides exactly what these tests check (the raw replies, pipelining,
dot-stuffing by hand), so the dialogue tests speak bytes through ``Wire``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from mssendmail.spool.layout import MAILDROP, Spool
from mssendmail.spool.record import read_message, verify


def bs_argv() -> list[str]:
    """The installed ``mssendmail -bs``, the way Symfony starts it."""
    return [str(Path(sys.executable).with_name("mssendmail")), "-bs"]


QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9a-f]{18})$")


class Wire:
    """Line-level SMTP client over a pair of binary streams."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)
        self.writer.flush()

    def line(self, text: str | bytes) -> None:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")

    def reply(self) -> tuple[int, list[bytes]]:
        """One (possibly multi-line) reply: (code, [full lines without CRLF])."""
        lines: list[bytes] = []
        while True:
            raw = self.reader.readline()
            if not raw:
                raise EOFError(f"connection closed after {lines!r}")
            assert raw.endswith(b"\r\n"), f"reply line without CRLF: {raw!r}"
            lines.append(raw[:-2])
            if raw[3:4] != b"-":
                return int(raw[:3]), lines

    def command(self, text: str | bytes) -> tuple[int, list[bytes]]:
        self.line(text)
        return self.reply()

    def expect(self, text: str | bytes, code: int) -> list[bytes]:
        got, lines = self.command(text)
        assert got == code, f"{text!r}: expected {code}, got {lines!r}"
        return lines

    def message(self, body: bytes) -> bytes:
        """DATA with ``body`` (already CRLF and dot-stuffed); returns the final reply line."""
        self.expect("DATA", 354)
        self.send(body + b".\r\n")
        _code, lines = self.reply()
        return lines[-1]


def queued_id(reply: bytes) -> str:
    match = QUEUED.match(reply)
    assert match, f"not a queued reply: {reply!r}"
    return match.group(1).decode()


def read_record(spool: Spool, queue_id: str) -> tuple[dict[str, Any], bytes]:
    """(envelope, message bytes) of a committed record in maildrop/, checksum verified."""
    with open(spool.path(MAILDROP, queue_id), "rb") as fh:
        envelope, length = verify(fh)
        return envelope, read_message(fh, length)


def maildrop_names(spool: Spool) -> list[str]:
    return sorted(os.listdir(spool.dir(MAILDROP)))


def split_received(message: bytes) -> tuple[bytes, bytes]:
    """(the Received: header we added, the rest) of a stored message."""
    assert message.startswith(b"Received: "), message[:80]
    end = 0
    while True:
        end = message.index(b"\r\n", end) + 2
        if message[end : end + 1] not in (b"\t", b" "):
            return message[:end], message[end:]


@contextmanager
def serving(make_protocol: Callable[[], asyncio.BaseProtocol]) -> Iterator[tuple[str, int]]:
    """An asyncio server for ``make_protocol`` on 127.0.0.1 in a background thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    address: list[tuple[str, int]] = []

    async def start() -> asyncio.Server:
        server = await loop.create_server(make_protocol, "127.0.0.1", 0)
        address.append(server.sockets[0].getsockname()[:2])
        ready.set()
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start())
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def connect(address: tuple[str, int]) -> Iterator[Wire]:
    sock = socket.create_connection(address, timeout=10)
    reader = sock.makefile("rb")
    writer = sock.makefile("wb")
    try:
        yield Wire(reader, writer)
    finally:
        reader.close()
        writer.close()
        sock.close()
