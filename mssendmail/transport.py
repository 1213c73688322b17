"""The transport interface, and the file transport used for trials and tests.

A transport takes a prepared MIME message (CRLF, headers fixed, recipients in
To/Cc/Bcc) and the mailbox to send it as. It returns on success and raises a
``DeliveryError`` subclass otherwise: ``TemporaryFailure`` (retry with
backoff), ``Throttled`` (pause the mailbox), ``SlowDown`` (long defer),
``PermanentFailure`` (dead-letter now) or ``ConfigurationFailure`` (pause the
whole queue). Transports must be safe to call from several threads at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from mssendmail.config import Config
from mssendmail.errors import ConfigError, TemporaryFailure
from mssendmail.spool.layout import fsync_dir


@dataclass(frozen=True)
class Delivered:
    """What a successful send reports back for the log line and the sent record."""

    status: int
    request_id: str | None = None


class Transport(Protocol):
    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered: ...

    def close(self) -> None: ...


class FileTransport:
    """Writes each message to OUTBOX_DIR/<queue id>.eml, durably, as Graph would receive it."""

    def __init__(self, outbox: str) -> None:
        if not outbox:
            raise ConfigError("TRANSPORT=file needs OUTBOX_DIR; set it in the config")
        self.outbox = outbox

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        final = os.path.join(self.outbox, f"{queue_id}.eml")
        tmp = os.path.join(self.outbox, f".{queue_id}.eml.tmp")
        try:
            os.makedirs(self.outbox, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(b"X-Mssendmail-Mailbox: " + mailbox.encode() + b"\r\n")
                fh.write(mime)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, final)
            fsync_dir(self.outbox)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to OUTBOX_DIR {self.outbox}: {exc}") from exc
        return Delivered(status=202)

    def close(self) -> None:
        return None


def from_config(cfg: Config) -> Transport:
    """The configured transport; graph is imported only when used (msal is heavy)."""
    kind = cfg.get("TRANSPORT").lower()
    if kind == "file":
        return FileTransport(cfg.get("OUTBOX_DIR"))
    if kind == "graph":
        from mssendmail.graph.transport import GraphTransport

        return GraphTransport.from_config(cfg)
    raise ConfigError(f"TRANSPORT={kind!r} is not known; use graph or file")
