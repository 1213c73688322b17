"""Turn a queued message into the MIME that Graph sendMail receives.

Pure functions, no network, no writes: the worker calls ``prepare()`` once per
delivery attempt on a copy of the queued bytes; the queue file never changes.
Deterministic for a given message, envelope and config (Date comes from the
submission time, Message-ID from the queue id), so a retry sends the same
message and a duplicate after a crash carries the same Message-ID.

What it does, and why:

* Line endings become CRLF: LF, CRLF, mixed, and lone CR (old Mac text, or
  progress bars in cron output) each end a line. RFC 5322 forbids bare CR and LF
  and Exchange's parser is not guaranteed to cope with them.
* Only the header section is edited; the body keeps every byte apart from line
  endings (8-bit text, long lines, MIME parts). The message is not re-serialised
  with email.generator: that is slow and may re-encode parts. A leading mbox
  ``From `` line is dropped; a first line that is not a header starts the body.
* Date and Message-ID are added when missing; Return-Path and Content-Length go.
* Bare local names (``root``) in the envelope and in To/Cc/Bcc are resolved
  through mssendmail.delivery.aliases; Graph never sees an unqualified address.
* Graph has no envelope: it delivers to To, Cc and Bcc. So the Bcc header is
  rebuilt to hold exactly the envelope recipients missing from To/Cc (Exchange
  removes Bcc from delivered copies). To/Cc recipients outside the envelope
  cannot be suppressed without changing what readers see; they come back as
  warnings for the log.
* The mailbox is SENDER, or the From address when mssendmail.delivery.trust
  allows it to this message's submitter (ALLOWED_FROM, ALLOWED_FROM_USERS).
  A missing From becomes ``"<-F name or FROM_NAME>" <SENDER>``; a From that is
  not allowed is rewritten to SENDER with its display name kept (also cron's
  comment form ``root (Cron Daemon)``), the old address moving to Reply-To
  unless one is present. A display name containing ``@`` is dropped: Graph
  takes it for an address and answers ErrorSendAsDenied (SMTP2Graph #28).
  A Sender header naming another mailbox is removed for the same reason.

SECURITY: message and envelope come from any local user, through the spool.
Nothing from them reaches a header unescaped: -F names and display names are
stripped of control characters and quoted or RFC 2047-encoded.
"""

from __future__ import annotations

import io
import os
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.errors import HeaderParseError, MessageError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.policy import SMTP
from email.utils import formatdate, quote
from typing import Any

from mssendmail.config import Config
from mssendmail.delivery import trust
from mssendmail.delivery.aliases import AliasFile, Resolver
from mssendmail.delivery.limits import (
    Limits,
    check_comments,
    check_header_recipients,
    check_mime,
    rough_address_count,
)
from mssendmail.delivery.mime import check_charset, normalise
from mssendmail.errors import ConfigError, DataError
from mssendmail.spool import record
from mssendmail.submission.addresses import parse_address_list, parse_mailboxes

CRLF = b"\r\n"
FOLD_AT = 78
MAX_LINE = 998
# A header field starts with a name of printable ASCII but ":" (RFC 5322 section
# 2.2), optionally followed by white space before the colon (obsolete syntax).
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DROP = frozenset({"return-path", "content-length"})
_BLOCK = 1 << 20
NOT_IN_ENVELOPE_SHOWN = 3


@dataclass(frozen=True)
class Prepared:
    """What one delivery attempt sends, and what the log line reports."""

    mime: bytes
    mailbox: str
    recipients: list[str]
    warnings: list[str]
    message_id: str
    mime_fixed: tuple[str, ...] = ()  # repairs by mssendmail.delivery.mime, for the log
    mime_kept: str = ""  # why a message went out untouched (signed, dkim)


class SenderPolicy:
    """The address rules of one Config, parsed once and reused for every message."""

    def __init__(
        self,
        sender: str,
        resolver: Resolver,
        *,
        from_name: str = "",
        allowed_from: Iterable[str] = (),
        allowed_users: str = "",
        default_charset: str = "iso-8859-1",
        limits: Limits | None = None,
        service_uid: int | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.sender = sender
        self.default_charset = default_charset
        self.sender_domain = sender.rpartition("@")[2]
        self.resolver = resolver
        self.from_name = from_name
        everyone = trust.parse_grants(
            "ALLOWED_FROM", allowed_from, "ALLOWED_FROM=app@example.com,@example.org"
        )
        self.rules = trust.FromRules(everyone, trust.parse_users(allowed_users))
        # The worker's own uid is the service user's: smtpd queues as it.
        self.service_uid = os.geteuid() if service_uid is None else service_uid

    @classmethod
    def from_config(cls, cfg: Config) -> SenderPolicy:
        sender = cfg.get("SENDER")
        if not sender:
            raise ConfigError(
                "SENDER is not set; set SENDER to the mailbox mail is sent as "
                "(e.g. SENDER=relay@example.com) in the config"
            )
        local, at, domain = sender.rpartition("@")
        if not local or not at or "." not in domain or any(c in sender for c in " <>,;\"'"):
            raise ConfigError(
                f"SENDER={sender!r} is not a mailbox address; set e.g. relay@example.com"
            )
        aliases = AliasFile(cfg.get("ALIASES")) if cfg.get("ALIASES") else None
        resolver = Resolver(
            local_domain=cfg.get("LOCAL_DOMAIN") or domain,
            admin_address=cfg.get("ADMIN_ADDRESS"),
            aliases=aliases,
        )
        if aliases is not None:
            aliases.table()  # an unreadable file is a ConfigError now, not at the first send
        try:
            charset = check_charset(cfg.get("DEFAULT_CHARSET"))
        except ValueError as exc:
            raise ConfigError(f"{exc}; fix DEFAULT_CHARSET in the config") from None
        return cls(
            sender,
            resolver,
            from_name=cfg.get("FROM_NAME"),
            allowed_from=cfg.addresses("ALLOWED_FROM"),
            allowed_users=cfg.get("ALLOWED_FROM_USERS"),
            default_charset=charset,
            limits=Limits.from_config(cfg),
        )

    def allows(self, address: str, envelope: Mapping[str, Any] | None = None) -> bool:
        """May the submitter of this envelope send as this From address (its own mailbox)?

        No envelope: as a local user that ALLOWED_FROM_USERS does not list.
        """
        address = address.lower()
        if address == self.sender.lower():
            return True
        local, at, _ = address.rpartition("@")
        if not local or not at or self.resolver.needs_resolving(address):
            return False
        who = trust.submitter(envelope or {}, self.service_uid)
        return self.rules.allows(address, who)


_POLICIES: weakref.WeakKeyDictionary[Config, SenderPolicy] = weakref.WeakKeyDictionary()


def policy_for(cfg: Config) -> SenderPolicy:
    """The SenderPolicy of a Config, built on first use (call at start-up to check the config)."""
    policy = _POLICIES.get(cfg)
    if policy is None:
        policy = _POLICIES[cfg] = SenderPolicy.from_config(cfg)
    return policy


# ---------------------------------------------------------------- raw message


def normalise_newlines(data: bytes) -> bytes:
    """CRLF everywhere; every lone CR and lone LF counts as a line end."""
    if b"\r" not in data:
        return data.replace(b"\n", CRLF)
    crlf = data.count(CRLF)
    if crlf == data.count(b"\r") == data.count(b"\n"):
        return data
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its continuation lines, CRLF-terminated) and the body.

    ``data`` must already be CRLF. Written by hand only because the stdlib parsers
    do not return the fields' exact bytes, which untouched headers must keep.
    """
    fields, pos = split_at(data)
    return fields, data[pos:]


def split_at(data: bytes) -> tuple[list[bytes], int]:
    """Like split_message, but the body's offset: no copy of a 100 MB body."""
    fields: list[bytes] = []
    pos = 0
    size = len(data)
    if data.startswith(b"From "):  # an mbox separator, not a header
        end = data.find(CRLF)
        pos = size if end < 0 else end + 2
    while pos < size:
        end = data.find(CRLF, pos)
        stop = size if end < 0 else end + 2
        line = data[pos:stop]
        if line == CRLF:
            return fields, stop
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_START.match(line):
            fields.append(line)
        else:
            break  # not a header line: the body starts here, without a blank line
        pos = stop
    if fields and not fields[-1].endswith(CRLF):
        fields[-1] += CRLF
    return fields, pos


def field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii").lower()


def field_value(field: bytes) -> str:
    """The unfolded value as text; raw 8-bit headers are read as UTF-8, else Latin-1."""
    raw = field.split(b":", 1)[1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "").strip()


# ---------------------------------------------------------------- addresses


def _decode_words(name: str) -> str:
    """A display name with RFC 2047 encoded words made readable."""
    if "=?" not in name:
        return name
    try:
        return str(make_header(decode_header(name)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return name


def clean_name(name: str | None) -> str:
    """A display name without control characters: CR/LF in -F must not inject headers."""
    return _CONTROL.sub(" ", name or "").strip()


def _addresses(value: str, header: str, warnings: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address-list header; group markers dropped.

    Read by the project's own rules (mssendmail.submission.addresses), not
    email.utils, whose answers differ between Python patch releases. A field
    it cannot read counts as holding no address, with a warning for the log:
    To/Cc stay as written, From is rewritten, Sender and Bcc go.
    """
    check_comments("an address header", value)  # bounded before any parser sees it
    try:
        return parse_mailboxes(value)
    except DataError as exc:
        warnings.append(f"{header} header not readable as addresses: {exc}")
        return []


def _fold_list(header: str, items: list[str]) -> bytes:
    """``Header: a, b, c`` folded after a comma before a line passes 78 characters."""
    lines = [f"{header}:"]
    for i, item in enumerate(items):
        piece = " " + item + ("," if i < len(items) - 1 else "")
        if i and len(lines[-1]) + len(piece) > FOLD_AT:
            lines.append("")
        lines[-1] += piece
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _format_one(name: str, addr: str) -> str:
    return f'"{quote(name)}" <{addr}>' if name else addr


def address_field(header: str, pairs: list[tuple[str, str]]) -> bytes:
    """A new address header; display names are quoted, or RFC 2047-encoded if not ASCII."""
    pairs = [(clean_name(n), a) for n, a in pairs]
    if all(n.isascii() for n, _ in pairs):
        items = [_format_one(n, a) for n, a in pairs]
        if all(len(i) < MAX_LINE - 20 for i in items):
            return _fold_list(header, items)
    try:
        objects = [Address(display_name=n, addr_spec=a) for n, a in pairs]
        folded: str = SMTP.header_factory(header, objects).fold(policy=SMTP)
        return folded.encode("ascii")
    except (MessageError, ValueError, IndexError, UnicodeError) as exc:
        raise DataError(f"cannot write the {header} header for {pairs!r}: {exc}") from exc


# ---------------------------------------------------------------- envelope


@dataclass(frozen=True)
class _Envelope:
    recipients: list[str]
    full_name: str
    time: float
    who: Mapping[str, Any]  # uid and smtp_user, for trust.submitter


def _check_envelope(envelope: Mapping[str, Any]) -> _Envelope:
    """The envelope fields prepare needs; a spool file is hostile input, so check types."""
    rcpts = envelope.get("recipients")
    if not isinstance(rcpts, list) or not all(isinstance(r, str) for r in rcpts):
        raise DataError("envelope recipients are not a list of addresses")
    full_name = envelope.get("full_name") or ""
    if not isinstance(full_name, str):
        raise DataError("envelope full_name is not a string")
    when = envelope.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        when = time.time()
    elif not record.time_ok(when):  # NaN, inf, 1e20: formatdate raised OverflowError
        raise DataError(f"envelope time {when!r} is not a time between 1970 and 2500")
    addresses = []
    for rcpt in rcpts:
        rcpt = rcpt.strip()
        if "<" in rcpt or " " in rcpt:
            try:
                found = parse_address_list(rcpt)
            except DataError:
                found = []
            rcpt = found[0] if len(found) == 1 else ""
        if rcpt:
            addresses.append(rcpt)
    who = {k: envelope.get(k) for k in ("uid", "smtp_user")}
    return _Envelope(addresses, clean_name(full_name), float(when), who)


# ---------------------------------------------------------------- prepare


class _Headers:
    """The header fields being edited: None marks a removed field, additions go last."""

    def __init__(self, fields: list[bytes]) -> None:
        self.fields: list[bytes | None] = list(fields)
        self.names = [field_name(f) for f in fields]
        self.added: list[bytes] = []

    def find(self, name: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n == name and self.fields[i] is not None]

    def value(self, index: int) -> str:
        field = self.fields[index]
        return "" if field is None else field_value(field)

    def remove(self, name: str) -> None:
        for i in self.find(name):
            self.fields[i] = None

    def to_bytes(self) -> bytes:
        return b"".join(f for f in self.fields if f is not None) + b"".join(self.added)


def prepare(
    message: bytes,
    envelope: Mapping[str, Any],
    cfg: Config | SenderPolicy,
    queue_id: str,
) -> Prepared:
    """The MIME, mailbox and recipients for one send of a queued message.

    Raises ConfigError (SENDER unset, unreadable ALIASES: pause the queue) and
    DataError (a message or envelope that can never be sent: dead-letter it).
    """
    policy = cfg if isinstance(cfg, SenderPolicy) else policy_for(cfg)
    env = _check_envelope(envelope)
    data, fields, body_at, lf_only = _split(message)
    headers = _Headers(fields)
    warnings: list[str] = []
    for name in _DROP:
        headers.remove(name)

    recipients = policy.resolver.resolve_all(env.recipients)
    if not recipients:
        warnings.append("no recipient left after alias expansion; nothing to deliver")
    _fix_recipient_headers(headers, policy, recipients, warnings)
    mailbox = _fix_from(headers, policy, env, warnings)
    message_id = _fix_date_and_id(headers, policy, env, queue_id)
    mime = _assemble(headers, data, body_at, lf_only)
    check_mime(mime, policy.limits)  # before any Graph request; LimitExceeded names the key
    fixed = normalise(  # charsets, long lines, 8-bit headers
        mime, policy.default_charset, policy.limits.mime_parts, policy.limits.mime_depth
    )
    return Prepared(fixed.mime, mailbox, recipients, warnings, message_id, fixed.fixed, fixed.kept)


def _split(message: bytes) -> tuple[bytes, list[bytes], int, bool]:
    """(data, header fields, body offset in data, LF-only?) of a queued message."""
    lf_only = b"\r" not in message
    if lf_only:
        # Unix mail (LF only): convert just the header section here and the
        # body straight into the result, so a 100 MB message is never held
        # three times (original, converted, result).
        end = message.find(b"\n\n")
        head = normalise_newlines(message if end < 0 else message[: end + 2])
        fields, at = split_at(head)
        return message, fields, at - head.count(CRLF, 0, at), True
    data = normalise_newlines(message)
    fields, body_at = split_at(data)
    return data, fields, body_at, False


def _fix_date_and_id(headers: _Headers, policy: SenderPolicy, env: _Envelope, queue_id: str) -> str:
    """Add Date: and Message-ID: when missing; returns the Message-ID."""
    if not headers.find("date"):
        headers.added.append(f"Date: {formatdate(env.time, localtime=True)}\r\n".encode())
    ids = headers.find("message-id")
    message_id = headers.value(ids[0]) if ids else ""
    if not message_id:
        headers.remove("message-id")
        token = "".join(c for c in queue_id if c.isalnum()) or "x"
        message_id = f"<{token}.mssendmail@{policy.sender_domain}>"
        headers.added.append(f"Message-ID: {message_id}\r\n".encode())
    return message_id


def _assemble(headers: _Headers, data: bytes, body_at: int, lf_only: bool) -> bytes:
    """The fixed header section, then the body, with CRLF line ends and one copy."""
    if lf_only:
        out = io.BytesIO()  # getvalue() hands over its buffer without a copy
        out.write(headers.to_bytes() + CRLF)
        for pos in range(body_at, len(data), _BLOCK):
            out.write(data[pos : pos + _BLOCK].replace(b"\n", CRLF))
        return out.getvalue()
    # Joined from a view: a sliced body would be a third copy of the message.
    return b"".join((headers.to_bytes(), CRLF, memoryview(data)[body_at:]))


def _fix_recipient_headers(
    headers: _Headers, policy: SenderPolicy, recipients: list[str], warnings: list[str]
) -> None:
    """Resolve local names in To/Cc; rebuild Bcc as the envelope minus To/Cc."""
    resolver = policy.resolver
    envelope = {r.lower() for r in recipients}
    visible: dict[str, str] = {}
    _count_header_recipients(headers, policy)
    for name in ("to", "cc"):
        for index in headers.find(name):
            pairs = _addresses(headers.value(index), name.capitalize(), warnings)
            if any(resolver.needs_resolving(addr) for _, addr in pairs):
                pairs = [
                    (_decode_words(shown), resolved)
                    for shown, addr in pairs
                    for resolved in resolver.resolve(addr)
                ]
                original = headers.fields[index] or b""
                header = original.split(b":", 1)[0].strip().decode("ascii")
                headers.fields[index] = address_field(header, pairs) if pairs else None
            for _, addr in pairs:
                visible.setdefault(addr.lower(), addr)
    _warn_outside([addr for key, addr in visible.items() if key not in envelope], warnings)
    for index in headers.find("bcc"):
        for _, addr in _addresses(headers.value(index), "Bcc", warnings):
            for resolved in resolver.resolve(addr):
                if resolved.lower() not in envelope:
                    warnings.append(f"Bcc recipient {resolved} is not in the envelope; removed")
    headers.remove("bcc")
    hidden = [r for r in recipients if r.lower() not in visible]
    if hidden:
        headers.added.append(address_field("Bcc", [("", r) for r in hidden]))


def _warn_outside(outside: list[str], warnings: list[str]) -> None:
    """One warning for the header recipients that are not envelope recipients."""
    if len(outside) == 1:
        warnings.append(
            f"header recipient {outside[0]} is not an envelope recipient; "
            "Graph delivers to it anyway"
        )
    elif outside:
        # One line, not one per address: a 100,000-address To: wrote 100,001 lines.
        first = ", ".join(outside[:NOT_IN_ENVELOPE_SHOWN])
        more = (
            f" and {len(outside) - NOT_IN_ENVELOPE_SHOWN} more"
            if len(outside) > NOT_IN_ENVELOPE_SHOWN
            else ""
        )
        warnings.append(
            f"{len(outside)} header recipients are not envelope recipients ({first}{more}); "
            "Graph delivers to them anyway"
        )


def _count_header_recipients(headers: _Headers, policy: SenderPolicy) -> None:
    """MAX_HEADER_RECIPIENTS over To, Cc and Bcc; a rough count first, so a
    100,000-address header is refused without parsing it."""
    values = [headers.value(i) for name in ("to", "cc", "bcc") for i in headers.find(name)]
    if sum(rough_address_count(v) for v in values) > 4 * policy.limits.header_recipients:
        check_header_recipients(sum(rough_address_count(v) for v in values), policy.limits)
    check_header_recipients(sum(len(_addresses(v, "To/Cc/Bcc", [])) for v in values), policy.limits)


def _say_if_reserved(
    policy: SenderPolicy, pairs: list[tuple[str, str]], env: _Envelope, warnings: list[str]
) -> None:
    """A log line when ALLOWED_FROM_USERS, not a missing ALLOWED_FROM entry, said no."""
    if len(pairs) != 1:
        return
    address = pairs[0][1].lower()
    owners = policy.rules.owners(address)
    if owners is not None:
        who = trust.submitter(env.who, policy.service_uid).describe()
        warnings.append(
            f"From {address} is reserved to {', '.join(owners)} by ALLOWED_FROM_USERS, "
            f"not to {who}; sent as SENDER"
        )


def _fix_from(headers: _Headers, policy: SenderPolicy, env: _Envelope, warnings: list[str]) -> str:
    """Make From a mailbox we may send as; returns that mailbox."""
    fallback_name = env.full_name or clean_name(policy.from_name)
    froms = headers.find("from")
    if not froms:
        headers.added.append(address_field("From", [(fallback_name, policy.sender)]))
        return policy.sender
    first = froms[0]
    if len(froms) > 1:
        warnings.append("several From headers; all but the first removed")
        for extra in froms[1:]:
            headers.fields[extra] = None
    pairs = _addresses(headers.value(first), "From", warnings)
    unique = {addr.lower() for _, addr in pairs}
    shown = clean_name(_decode_words(next((n for n, _ in pairs if n), "")))
    usable_name = shown if "@" not in shown else ""

    if len(unique) == 1 and policy.allows(pairs[0][1], env.who):
        mailbox = pairs[0][1]
        if len(pairs) > 1 or usable_name != shown:
            # "a@b <a@b>": an unquoted address as display name; Graph refuses it.
            headers.fields[first] = address_field("From", [(usable_name or fallback_name, mailbox)])
    else:
        mailbox = policy.sender
        headers.fields[first] = address_field("From", [(usable_name or fallback_name, mailbox)])
        _say_if_reserved(policy, pairs, env, warnings)
        _keep_from_as_reply_to(headers, policy, pairs, warnings)
    _drop_foreign_sender(headers, mailbox, warnings)
    return mailbox


def _keep_from_as_reply_to(
    headers: _Headers, policy: SenderPolicy, pairs: list[tuple[str, str]], warnings: list[str]
) -> None:
    """A From we replaced becomes Reply-To, unless the message has one."""
    if headers.find("reply-to"):
        return
    # Bare names (cron's "root") are no address anyone can reply to.
    replies = [(n, a) for n, a in pairs if not policy.resolver.needs_resolving(a)]
    if replies:
        replies = [(_decode_words(n), a) for n, a in replies]
        try:
            headers.added.append(address_field("Reply-To", replies))
        except DataError as exc:
            warnings.append(f"original From kept out of Reply-To: {exc}")


def _drop_foreign_sender(headers: _Headers, mailbox: str, warnings: list[str]) -> None:
    for index in headers.find("sender"):
        named = _addresses(headers.value(index), "Sender", warnings)
        if {a.lower() for _, a in named} != {mailbox.lower()}:
            # Sender naming another mailbox makes Exchange check send-on-behalf rights.
            headers.fields[index] = None
            warnings.append("Sender header removed: it named a mailbox other than the one sending")
