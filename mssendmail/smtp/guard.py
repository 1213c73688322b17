"""Deadlines and per-peer limits for mssendmail-smtpd: no slowloris holds its slots.

aiosmtpd's timeout restarts with every byte, so 20 connections sending one
byte every 30 s held all of SMTPD_MAX_CLIENTS for ever. Here time is
counted per *command*: from the last reply, a client has
SMTPD_COMMAND_TIMEOUT to complete its next command, plus one second per
SMTPD_MIN_DATA_RATE bytes it sent meanwhile (a big DATA at a sane rate is
never cut). A session ends after SMTPD_SESSION_TIMEOUT whatever it does.
A watchdog checks every second and ends late sessions with 421 4.4.2.

When every slot is taken, a new connection takes the slot of the session
that has waited longest for a command, if it has waited STRESS_IDLE or more
(Postfix shortens its timeouts under stress the same way); otherwise it gets
421. A remote peer may hold SMTPD_MAX_PER_PEER sessions; loopback is exempt,
since every local client shares 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mssendmail import config
from mssendmail.errors import ConfigError
from mssendmail.smtp.protocol import Server

STRESS_IDLE = 5.0
TIMEOUT_REPLY = b"421 4.4.2 Timeout: %s; closing connection\r\n"
PEER_REPLY = b"421 4.7.0 Too many connections from your address; try again later\r\n"


@dataclass(frozen=True)
class Deadlines:
    command: float = 60.0
    session: float = 600.0
    min_rate: float = 1024.0  # bytes a second
    per_peer: int = 10

    @classmethod
    def from_config(cls, cfg: config.Config) -> Deadlines:
        d = cls(
            command=cfg.seconds("SMTPD_COMMAND_TIMEOUT"),
            session=cfg.seconds("SMTPD_SESSION_TIMEOUT"),
            min_rate=float(cfg.size("SMTPD_MIN_DATA_RATE")),
            per_peer=cfg.integer("SMTPD_MAX_PER_PEER"),
        )
        if d.command < 1 or d.session < d.command or d.min_rate < 1 or d.per_peer < 1:
            raise ConfigError(
                "SMTPD_COMMAND_TIMEOUT must be at least 1s and at most SMTPD_SESSION_TIMEOUT; "
                "SMTPD_MIN_DATA_RATE and SMTPD_MAX_PER_PEER at least 1"
            )
        return d


class GuardedServer(Server):
    """Server that records when it last answered and what it received since."""

    def __init__(self, *args: Any, peer_ok: Callable[[Any], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = self.last_reply = time.monotonic()
        self.received = 0  # bytes since the last reply
        self.peer_ok = peer_ok
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        if not self.peer_ok(self.peer):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(PEER_REPLY)
            transport.close()
            self.peer = None
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)

    async def push(self, status: str | bytes) -> None:
        self.last_reply = time.monotonic()
        self.received = 0
        await super().push(status)

    def waited(self, now: float) -> float:
        return now - self.last_reply

    def late(self, now: float, d: Deadlines) -> str | None:
        """Why this session must end now, or None."""
        if now - self.started > d.session:
            return "session too long"
        if self.waited(now) > d.command + self.received / d.min_rate:
            return "command too slow"
        return None

    def end(self, why: str) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(TIMEOUT_REPLY % why.encode())
            transport.close()


def peer_host(peer: Any) -> str | None:
    return peer[0] if isinstance(peer, tuple) and peer else None
