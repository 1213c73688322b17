"""One error hierarchy and one table of sysexits codes for every program.

Each error carries the one-line message a user sees; programs print
``<prog>: <message>`` and exit with ``EXIT_CODES[type]``, never a traceback.
"""

from __future__ import annotations

# sysexits.h values, the only exit codes the programs use.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78


class MssendmailError(Exception):
    """Root of every error a user can cause or see."""


class UsageError(MssendmailError, ValueError):
    """Bad command line: unknown flag, missing argument, no recipients."""


class DataError(MssendmailError, ValueError):
    """Bad input data: unparsable address, NUL byte, message too big."""


class NoSuchMessage(MssendmailError, LookupError):
    """An admin named a queue id that does not exist."""


class SpoolError(MssendmailError, OSError):
    """The spool is missing, not writable or full; the caller may retry later."""


class PermissionDenied(MssendmailError, PermissionError):
    """The caller may not do this (not root, not in the worker's group)."""


class ConfigError(MssendmailError, ValueError):
    """The configuration is unusable; an admin must fix it."""


class DeliveryError(MssendmailError):
    """Root of delivery failures raised by transports.

    ``outcome_unknown`` is set by a transport when the request may have
    reached Graph and been acted on (a timeout or reset after the body was
    sent, a 5xx, a 429 without Retry-After): mssendmail.delivery.idempotency
    then looks before it sends again. ``draft_id`` names the draft of a
    large message whose /send had that fate.
    """

    outcome_unknown: bool = False
    draft_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Retry this message later with backoff (network, 5xx, 429)."""


class Throttled(TemporaryFailure):
    """Graph asked us to slow down: pause every send to the mailbox until retry_after."""


class SlowDown(TemporaryFailure):
    """Mailbox quota or message-rate limit: defer the message for a long time."""


class PermanentFailure(DeliveryError):
    """This message can never be sent: dead-letter it at once."""


class ConfigurationFailure(DeliveryError):
    """Credentials or tenant setup are wrong: pause the whole queue, do not dead-letter."""


EXIT_CODES: dict[type[BaseException], int] = {
    UsageError: EX_USAGE,
    DataError: EX_DATAERR,
    NoSuchMessage: EX_NOUSER,
    SpoolError: EX_TEMPFAIL,
    PermissionDenied: EX_NOPERM,
    ConfigError: EX_CONFIG,
    DeliveryError: EX_TEMPFAIL,
    PermanentFailure: EX_DATAERR,
    MssendmailError: EX_SOFTWARE,
    # An OSError that escaped every handler is most likely the disk or the spool.
    OSError: EX_TEMPFAIL,
}


def exit_code(exc: BaseException) -> int:
    """The sysexits code for an exception: the nearest class in EXIT_CODES wins."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EX_SOFTWARE
