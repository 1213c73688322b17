"""The SMTP protocol shared by ``mssendmail -bs`` and ``mssendmail-smtpd``.

NAME
    mssendmail.smtp.protocol -- aiosmtpd server and handler that queue each message

DESCRIPTION
    aiosmtpd parses the protocol (HELO/EHLO, MAIL, RCPT, DATA with dot
    unstuffing, RSET, NOOP, QUIT, VRFY, AUTH, STARTTLS). This module adds
    what mssendmail needs on top of it:

    - on DATA, the message (as received after dot-unstuffing, CRLF line
      endings) is written through ``Submission`` with a ``Received:`` header
      in front, and ``250 2.0.0 Ok: queued as <id>`` is sent only after
      ``commit()`` returned, so a 250 always means "on disk";
    - the replies the issue asks for: 501 for a bad address (aiosmtpd says
      553), 451 when the spool cannot take the message, 552 when it is too
      big, VRFY 252;
    - EHLO also advertises PIPELINING and ENHANCEDSTATUSCODES, and every
      reply other than the greeting and the HELO/EHLO answer then carries an
      enhanced status code (RFC 2034 requires that once it is advertised);
    - end of input after a complete command is not a disconnect: the
      commands already received are still answered, so a whole session can
      be piped in from a file.

READS/WRITES
    Writes one spool record per accepted message into QUEUE_DIR/maildrop.

SECURITY
    Envelope addresses come from the client and are checked here (no
    control characters, bounded length) and again by the worker. The
    Received: header never names recipients: Graph sends one MIME message to
    everyone, so "for <bcc@x>" would reveal a Bcc recipient.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from mssendmail.errors import DataError, MssendmailError
from mssendmail.smtp import aiosmtpd_compat
from mssendmail.spool.layout import Spool
from mssendmail.submission.writer import Submission, make_envelope

log = logging.getLogger("mssendmail.smtp.protocol")

# Graph and Exchange refuse far fewer; the cap only bounds memory and the envelope.
MAX_RECIPIENTS = 1000
# RFC 5321 says 1000 octets, but `mssendmail -t` stores longer lines as they
# come; an SMTP client must not fail where the same message piped in works.
LINE_LIMIT = 1024 * 1024
MAX_ADDRESS = 320
MAX_AUTH_FAILURES = 3

_STATUS = re.compile(r"([245])(\d\d)([ -])(?!\d\.\d{1,3}\.\d{1,3}(?: |$))")
# Enhanced codes (RFC 3463) for the replies aiosmtpd sends without one.
_ENHANCED = {
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")


def with_enhanced_code(line: str) -> str:
    """The reply line with an RFC 3463 code after the status, unless it has one."""
    match = _STATUS.match(line)
    if match is None or line.startswith("220"):
        return line
    code = line[:3]
    enhanced = _ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{match.group(3)}{enhanced} {line[4:]}"


def valid_address(address: str) -> bool:
    """A usable envelope address: user@domain or a bare local name the worker qualifies."""
    if not address or len(address) > MAX_ADDRESS or address == "<>":
        return False
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in address):
        return False
    local, at, domain = address.rpartition("@")
    if "@" in local and not local.startswith('"'):
        return False  # only a quoted local part may hold an "@"
    return not at or bool(local and domain)


def received_header(
    *,
    helo: str,
    client: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    now: float | None = None,
) -> bytes:
    """The Received: line we prepend (RFC 5321 4.4), folded, CRLF-terminated."""
    helo = _HELO_UNSAFE.sub("?", helo)[:200] or "unknown"
    text = (
        f"Received: from {helo} ({client})\r\n"
        f"\tby {hostname} (mssendmail) with {protocol} id {queue_id};\r\n"
        f"\t{formatdate(now, localtime=True)}\r\n"
    )
    return text.encode("ascii", "replace")


class QueueHandler:
    """aiosmtpd handler: queues every accepted message through Submission."""

    def __init__(self, spool: Spool, max_size: int, source: str, hostname: str) -> None:
        self.spool = spool
        self.max_size = max_size
        self.source = source
        self.hostname = hostname
        self.inflight = 0  # messages being written now; shutdown waits for them

    async def handle_EHLO(
        self,
        server: Server,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do what aiosmtpd would
        if not server.auth_enabled:
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self,
        server: Server,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address  # a hook that answers must do what aiosmtpd would
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: Server,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 Too many recipients; send at most {MAX_RECIPIENTS} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_VRFY(
        self, server: Server, session: Session, envelope: Envelope, address: str
    ) -> str:
        return "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"

    async def handle_DATA(self, server: Server, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        extra: dict[str, Any] = {}
        user: Any = session.auth_data  # what our authenticator returned: the user name
        if session.authenticated and isinstance(user, str):
            extra["smtp_user"] = user
        self.inflight += 1
        try:
            # fsync takes milliseconds: off the event loop, so other sessions go on.
            queue_id = await asyncio.to_thread(
                self.queue, content, sender, recipients, server.received_for(session), extra
            )
        except DataError:
            return f"552 5.3.4 Message too big; the limit is {self.max_size} bytes"
        except (MssendmailError, OSError) as exc:
            log.warning("cannot queue a message from %s: %s", server.client_text(session), exc)
            return f"451 4.3.0 Cannot queue the message now ({_one_line(exc)}); try again later"
        finally:
            self.inflight -= 1
        log.info(
            "queued %s from=<%s> nrcpt=%d size=%d client=%s",
            queue_id,
            sender,
            len(recipients),
            len(content),
            server.client_text(session),
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def queue(
        self,
        content: bytes,
        sender: str,
        recipients: list[str],
        received: tuple[str, str, str],
        extra: dict[str, Any],
    ) -> str:
        """Write and commit one message; returns its queue id once it is durable."""
        helo, client, protocol = received
        with Submission(self.spool, self.max_size + 2048) as sub:
            sub.write(
                received_header(
                    helo=helo,
                    client=client,
                    hostname=self.hostname,
                    protocol=protocol,
                    queue_id=sub.id,
                )
            )
            sub.write(content)
            envelope = make_envelope(sender, recipients, source=self.source)
            envelope.update(extra)
            return sub.commit(envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %r", error, exc_info=error)
        return "451 4.3.0 Internal error; try again later"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class Server(SMTP):
    """aiosmtpd's SMTP with mssendmail's replies and end-of-input handling."""

    line_length_limit = LINE_LIMIT

    def __init__(
        self,
        handler: QueueHandler,
        *,
        client_label: str | None = None,
        authenticator: Any = None,
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd would look the FQDN up in DNS for every connection.
        kwargs.setdefault("hostname", handler.hostname)
        kwargs.setdefault("data_size_limit", handler.max_size)
        kwargs.setdefault("ident", "mssendmail ESMTP")
        super().__init__(handler, authenticator=authenticator, **kwargs)
        self.auth_enabled = authenticator is not None
        self.client_label = client_label
        self.on_close = on_close
        self._plain_replies = False
        self._auth_failures = 0

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        callback, self.on_close = self.on_close, None  # once, even if called again
        if callback is not None:
            callback()

    # -- replies ----------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            await super().push(status)
            return
        await super().push(status if self._plain_replies else with_enhanced_code(status))

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._bad_address(arg, "FROM:", null_ok=True):
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._bad_address(arg, "TO:", null_ok=False):
            return
        await super().smtp_RCPT(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.auth_enabled:
            await self.push("502 5.5.1 AUTH is not available here")
            return
        await super().smtp_AUTH(arg)
        if self.session is not None and not self.session.authenticated:
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                # Guessing passwords costs a new connection every few tries.
                await self.push("421 4.7.0 Too many failed AUTH attempts; closing")
                if self.transport is not None:
                    self.transport.close()

    async def _bad_address(self, arg: str | None, keyword: str, *, null_ok: bool) -> bool:
        """Answer 501 for an address aiosmtpd cannot parse or we will not queue."""
        session = self.session
        if arg is None or session is None or not session.host_name:
            return False  # aiosmtpd's own syntax and sequence replies apply
        if aiosmtpd_compat.auth_required(self) and not session.authenticated:
            return False  # 530 first: say nothing about addresses to strangers
        rest = aiosmtpd_compat.strip_command_keyword(self, keyword, arg)
        if not rest:
            return False  # "501 Syntax: ..." from aiosmtpd
        address, _params = aiosmtpd_compat.getaddr(self, rest)
        if address == "<>" and null_ok:
            return False  # the null sender of RFC 5321 4.5.5; queued as ""
        if address is not None and valid_address(address):
            return False
        await self.push("501 5.1.3 Bad address syntax; use <user@domain>")
        return True

    # -- end of input -----------------------------------------------------

    def eof_received(self) -> bool | None:
        """Half-close: answer what was already received, then close.

        aiosmtpd cancels the session at once, which drops commands still in
        the buffer (``mssendmail -bs < session.txt`` would queue nothing).
        """
        if self.session is None or self.session.ssl is not None:
            return bool(super().eof_received())
        aiosmtpd_compat.feed_eof(self)
        return True  # keep our sending half open for the remaining replies

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.IncompleteReadError):
            # End of input in the middle of a command or of DATA: nothing of an
            # unfinished message is queued; end the session quietly.
            if self.transport is not None:
                self.transport.close()
            aiosmtpd_compat.cancel_session(self)
            return "421 4.4.2 End of input; closing"
        return str(await super().handle_exception(error))

    # -- what the handler needs to know about the session -----------------

    def client_text(self, session: Session) -> str:
        """The client as a Received: comment and log field: "[ip]" or the -bs label."""
        if self.client_label is not None:
            return self.client_label
        peer: Any = session.peer  # typed str by aiosmtpd, a (host, port, ...) tuple for TCP
        if isinstance(peer, tuple) and peer:
            return f"[{peer[0]}]"
        return "local"

    def received_for(self, session: Session) -> tuple[str, str, str]:
        """(helo, client, protocol) for the Received: header, RFC 3848 protocol names."""
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.extended_smtp and session.ssl is not None:
            protocol += "S"
        if session.extended_smtp and session.authenticated:
            protocol += "A"
        return session.host_name or "unknown", self.client_text(session), protocol


def local_hostname() -> str:
    """This host's name without a DNS lookup (``socket.getfqdn`` can hang for seconds)."""
    return socket.gethostname() or "localhost"
