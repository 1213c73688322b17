"""One error hierarchy and one table of sysexits codes for every program.

Each error carries the one-line message a user sees; programs print
``<prog>: <message>`` and exit with ``EXIT_CODES[type]``, never a traceback.
``run_main`` is the one wrapper every program's ``main()`` runs in: it turns
any error into that one line and its code, and maps OSError in one place.

This module is on the submission path: standard library only.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost submission time
    from collections.abc import Callable

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
# Not in sysexits.h: 128 + SIGINT, what a shell reports after Ctrl-C.
EX_INTERRUPTED = 130


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


class CannotListen(MssendmailError, OSError):
    """A listener cannot bind its address (port in use, no permission for it)."""


class Interrupted(MssendmailError):
    """A signal stopped the program before it finished; nothing was done, try again."""


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
    Interrupted: EX_TEMPFAIL,
    CannotListen: EX_OSERR,
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


# What to check when an OSError reaches a program's main(); each program may name its own.
SPOOL_HINT = "check QUEUE_DIR and free disk space"


def os_error_line(exc: OSError, hint: str = SPOOL_HINT) -> str:
    """An OSError as one line: what failed, on which file, and what to check."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}; {hint}"


def say(line: str) -> None:
    """One line on stderr, whatever the text holds and even if stderr is gone."""
    text = line.replace("\r", " ").replace("\n", " ") + "\n"
    stream = sys.stderr
    try:
        if stream is not None:
            stream.write(text)
            stream.flush()
        else:  # started with fd 2 closed; sendmail points it at /dev/null
            os.write(2, text.encode("utf-8", "backslashreplace"))
    except (OSError, ValueError):
        pass  # stderr closed: the exit status still tells


def run_main(
    prog: str,
    body: Callable[[], int],
    *,
    hint: str = SPOOL_HINT,
    on_interrupt: int = EX_INTERRUPTED,
) -> int:
    """Run a program's body; every error becomes one line on stderr and a sysexits code.

    - MssendmailError: its message and its EXIT_CODES entry;
    - OSError: EX_TEMPFAIL (the disk or the spool, most likely: retry later), with
      `hint` saying what to check;
    - KeyboardInterrupt: `on_interrupt` (130, as a shell reports it; 0 for a daemon);
    - anything else is a bug: EX_SOFTWARE, one line asking for a report.
    """
    try:
        return body()
    except KeyboardInterrupt:
        return on_interrupt
    except MssendmailError as exc:
        say(f"{prog}: {exc}")
        return exit_code(exc)
    except OSError as exc:
        say(f"{prog}: {os_error_line(exc, hint)}")
        return EX_TEMPFAIL
    except Exception as exc:
        say(f"{prog}: internal error: {type(exc).__name__}: {exc}; please report this bug")
        return EX_SOFTWARE
