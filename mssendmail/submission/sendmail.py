"""mssendmail -- a sendmail-compatible submission program that only queues.

NAME
    mssendmail, sendmail, mailq, newaliases

SYNOPSIS
    mssendmail [flags] [--] [recipient ...] < message
    mailq | mssendmail -bp
    mssendmail -q

DESCRIPTION
    Reads one RFC 5322 message from standard input and queues it durably in
    QUEUE_DIR/maildrop/; the worker (mssendmail-worker) delivers it later.
    Recipients are the argv addresses (comma lists and bare local names such
    as ``root`` allowed) plus, with -t or when argv names nobody, every
    address in every To:, Cc: and Bcc: field. Without -i/-oi a line holding
    only "." ends the input (nothing after it is read); ".." is kept as is.
    The message is stored byte for byte; the worker adds Date:, Message-ID:,
    removes Bcc: and resolves local names. The flag table is in flags.py.
    Called as ``mailq`` it lists the queue (-bp); as ``newaliases`` (-bi) it
    does nothing. -q wakes the worker to retry deferred mail and to lift a
    delivery pause; it needs no secrets. Run by root or group mssendmail,
    -q lifts the pause itself and says so on stderr. -v prints the queue id
    on stderr; success prints nothing.

READS/WRITES
    stdin, streamed in chunks (never held in memory), into
    maildrop/tmp.<id> (flocked), then renamed to maildrop/<id> after fsync;
    the directory is fsynced before exit 0. Writes one byte to the trigger
    FIFO. The config file is read only if the caller can read it.

SECURITY
    Runs as the caller with no privileges, secrets or network. maildrop/ is
    mode 3773: anyone may create a file there but not list or delete
    others'. The record's uid and user are claims the worker re-checks.
    -f/-F/addresses holding CR, LF or NUL are refused (header injection).
    SIGTERM, SIGINT, SIGHUP and SIGPIPE before the commit remove the
    temporary file and queue nothing; after kill -9 the unlocked temporary
    file is removed by the worker.

EXIT STATUS
    0 queued (or listed / no-op); 64 usage: unknown flag, no recipients,
    -bs; 65 bad data: unparsable address, NUL byte, message over
    MAX_MESSAGE_SIZE, header injection; 75 spool missing, unwritable or
    full, or interrupted by a signal; 77 mailq without permission;
    78 unusable config; 70 internal error. Errors are one line on stderr:
    ``mssendmail: <what happened>; <what to do>``.

FILES
    /etc/mssendmail/.env (or $MSSENDMAIL_CONFIG, or --config PATH):
    QUEUE_DIR, MAX_MESSAGE_SIZE.  QUEUE_DIR/maildrop/, QUEUE_DIR/trigger.

PERFORMANCE
    This module is the hot path: standard library only, and not even
    ``typing``; bench/submit.py measures it (bench/RESULTS.md, Submission).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # see HANDLED_SIGNALS
import os
import sys

from mssendmail import config as config_mod
from mssendmail import errors
from mssendmail.errors import DataError, UsageError
from mssendmail.submission import flags
from mssendmail.submission.addresses import (
    HeaderCollector,
    check_full_name,
    parse_address_list,
    parse_sender,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is slow to import
    from typing import NoReturn

    from mssendmail.config import Config
    from mssendmail.spool.layout import Spool
    from mssendmail.submission.writer import Submission

CHUNK = 256 * 1024
MAX_RECIPIENTS = 10000  # record.validate_envelope quarantines longer lists
# The C core of the signal module, which the interpreter has always loaded:
# ``import signal`` builds three IntEnums at import, which submission need not pay.
SIGNAL_NAMES: dict[int, str] = {
    _signal.SIGTERM: "SIGTERM",
    _signal.SIGINT: "SIGINT",
    _signal.SIGHUP: "SIGHUP",
    _signal.SIGPIPE: "SIGPIPE",
}
HANDLED_SIGNALS = tuple(SIGNAL_NAMES)


class Interrupted(errors.Interrupted):
    """A signal arrived before the message was committed; nothing was queued."""


def _on_signal(signum: int, _frame: object) -> None:
    # Fire once: a second signal while this one unwinds must not raise inside
    # the cleanup or the error report.
    for sig in HANDLED_SIGNALS:
        _signal.signal(sig, _signal.SIG_IGN)
    raise Interrupted(
        f"interrupted by signal {SIGNAL_NAMES.get(signum, signum)}; nothing was queued, send again"
    )


class LoneDotFilter:
    """Cuts the input at a line holding only "." (no -i), across chunk boundaries.

    A candidate "." or ".\\r" at the end of a chunk is held back until the
    next chunk decides; at EOF it is the end marker and is dropped. ".." is
    not un-stuffed, as in Postfix.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.at_line_start = True
        self.ended = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to store from chunk; sets ``ended`` at the lone dot."""
        data = self.pending + chunk
        self.pending = b""
        if self.at_line_start and (data.startswith(b".\n") or data.startswith(b".\r\n")):
            self.ended = True
            return b""
        cut = _first_of(data.find(b"\n.\n"), data.find(b"\n.\r\n"))
        if cut >= 0:
            self.ended = True
            return data[: cut + 1]
        line_start = data.rfind(b"\n") + 1
        if line_start == 0 and not self.at_line_start:
            line_start = len(data)
        if data[line_start:] in (b".", b".\r"):
            self.pending = data[line_start:]
            data = data[:line_start]
        if data:
            self.at_line_start = data.endswith(b"\n")
        return data


def _first_of(a: int, b: int) -> int:
    if a < 0:
        return b
    return a if b < 0 else min(a, b)


def _ensure_std_fds() -> None:
    """Open /dev/null on a closed fd 0-2, so no spool file can become our stdin or stderr."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _dedupe(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    unique: list[str] = []
    for address in addresses:
        if address not in seen:
            seen.add(address)
            unique.append(address)
    return unique


def _argv_recipients(args: list[str]) -> list[str]:
    found: list[str] = []
    for arg in args:
        try:
            found.extend(parse_address_list(arg))
        except DataError as exc:
            raise DataError(f"recipient argument: {exc}; fix the address") from None
    return found


def submit(cfg: Config, opts: flags.Options, stdin_fd: int = 0) -> str:
    """Queue the message on stdin; returns the queue id (the -bm mode).

    Signals are blocked except while we wait for stdin, which is where a
    caller cancels: the create and the commit happen whole or not at all.
    A signal during ``commit`` could otherwise land after the rename and
    make us report failure for a message the worker will send. They stay
    blocked after the commit; main() then discards what is pending.
    """
    from mssendmail.spool.layout import Spool
    from mssendmail.spool.record import MAX_ENVELOPE, encode_envelope
    from mssendmail.submission.writer import Submission, check_quota, make_envelope

    check_quota(Spool(cfg.queue_dir), os.getuid())
    sender = parse_sender(opts.sender) if opts.sender is not None else ""
    full_name = check_full_name(opts.full_name) if opts.full_name is not None else None
    argv_rcpts = _argv_recipients(opts.recipients)
    extract = opts.extract or not argv_rcpts
    headers = HeaderCollector() if extract else None
    dots = None if opts.ignore_dots else LoneDotFilter()
    _signal.pthread_sigmask(_signal.SIG_BLOCK, HANDLED_SIGNALS)
    with Submission(Spool(cfg.queue_dir), cfg.max_message_size) as sub:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        try:
            _stream(stdin_fd, sub, headers, dots)
        finally:
            _signal.pthread_sigmask(_signal.SIG_BLOCK, HANDLED_SIGNALS)
        recipients = _dedupe(argv_rcpts + (headers.recipients() if headers else []))
        if len(recipients) > MAX_RECIPIENTS:
            raise DataError(
                f"{len(recipients)} recipients: at most {MAX_RECIPIENTS} fit in one message; "
                "split the list"
            )
        if not recipients:
            raise UsageError(
                "no recipients: none on the command line and none in To:, Cc: or Bcc:; "
                "name at least one"
            )
        envelope = make_envelope(
            sender,
            recipients,
            from_headers=extract,
            argv_recipients=argv_rcpts,
            full_name=full_name,
            source="sendmail",
        )
        if len(encode_envelope(envelope)) > MAX_ENVELOPE:  # the worker would quarantine it
            raise DataError("the recipient list is too long for one message; split the list")
        return sub.commit(envelope)


def _stream(
    fd: int, sub: Submission, headers: HeaderCollector | None, dots: LoneDotFilter | None
) -> None:
    """Copy stdin into the submission chunk by chunk, checking as it goes."""
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError as exc:
            raise errors.SpoolError(
                f"cannot read the message from standard input: {exc.strerror}; "
                "check how the caller passes the message"
            ) from exc
        if not chunk:
            return
        if dots is not None:
            chunk = dots.feed(chunk)
        if b"\0" in chunk:
            raise DataError("the message contains a NUL byte; send text or MIME-encoded data")
        if headers is not None:
            headers.feed(chunk)
        sub.write(chunk)
        if dots is not None and dots.ended:
            return  # Postfix reads nothing after the lone dot


def run_bs(cfg: Config) -> int:
    """-bs: SMTP on stdin/stdout (mssendmail/smtp/bs.py); aiosmtpd is imported only on this path."""
    from mssendmail.smtp.bs import main_bs

    return main_bs(cfg)


def list_queue(spool: Spool) -> int:
    """-bp / mailq."""
    from mssendmail.admin.mailq import list_queue as lister

    # `mailq | head` should end quietly, like any Unix lister.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    return lister(spool, sys.stdout)


def run(argv: list[str], prog: str, stdin_fd: int = 0) -> int:
    """Everything but the error reporting; returns the exit status."""
    if prog == "newaliases":
        return 0
    opts = flags.parse(argv)
    if prog == "mailq":
        opts.mode = "list"
    if opts.mode == "newaliases":
        return 0
    if opts.mode in ("help", "version"):
        from mssendmail import __version__

        print(flags.usage() if opts.mode == "help" else f"mssendmail {__version__}")
        return 0
    cfg = config_mod.load(opts.config)
    problem = cfg.syntax_problem()
    if problem is not None:
        # The worker refuses this config; the mail is queued anyway, on the
        # lines that parse: a submitter must not lose mail to an admin's typo.
        errors.say(f"{prog}: warning: {problem}; mail is still accepted")
    if opts.mode == "smtp":
        return run_bs(cfg)
    from mssendmail.spool.layout import Spool

    if opts.mode == "flush":
        return flush(Spool(cfg.queue_dir))
    if opts.mode == "list":
        return list_queue(Spool(cfg.queue_dir))
    queue_id = submit(cfg, opts, stdin_fd)
    if opts.verbose:
        errors.say(f"{prog}: queued as {queue_id}")
    return 0


def flush(spool: Spool) -> int:
    """-q: lift a pause if we may (root, group mssendmail), then ask for a flush.

    Others cannot write state/; the worker lifts the pause on their flush
    request instead (rate-limited, so no one can make it hammer the token
    endpoint with a bad secret).
    """
    import time

    from mssendmail.spool import pause

    try:
        lifted = pause.lift(spool, time.time())
    except OSError:
        lifted = None
    if lifted is not None:
        reason = "".join(c if c.isprintable() else "?" for c in lifted.reason[:200])
        errors.say(f"mssendmail: delivery resumed: lifted the pause after: {reason}")
    spool.wake(flush=True)
    return 0


def main(argv: list[str] | None = None, stdin_fd: int = 0) -> int:
    """Console entry point: one line on stderr and a sysexits code for every failure."""
    args = sys.argv if argv is None else argv
    prog = os.path.basename(args[0]) if args else "mssendmail"
    if prog not in ("mailq", "newaliases"):
        prog = "mssendmail"
    _ensure_std_fds()
    saved = {sig: _signal.signal(sig, _on_signal) for sig in HANDLED_SIGNALS}
    try:
        try:
            return _report(list(args[1:]), prog, stdin_fd)
        except Interrupted as exc:  # landed while another error was being reported
            errors.say(f"{prog}: {exc}")
            return errors.EX_TEMPFAIL
    finally:
        # Pending (blocked) signals are discarded: they came after the commit.
        for sig in HANDLED_SIGNALS:
            _signal.signal(sig, _signal.SIG_IGN)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        for sig, handler in saved.items():
            _signal.signal(sig, handler)


def exit_main() -> NoReturn:
    """The installed command: main(), then exit, skipping the interpreter's teardown
    where nothing is left for it to do.

    Tearing down every module and object at exit is a large share of a
    submission's time (bench/RESULTS.md, Packages), and a submission
    leaves nothing behind that needs it: its fds are closed and no thread or
    atexit function exists. Where one does (-bs starts asyncio and logging),
    or stdout cannot be flushed, the normal exit runs, with its usual reports.
    """
    code = main()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed or failing stdout: Python reports it as always
        sys.exit(code)
    if "threading" in sys.modules or _atexit_pending():
        sys.exit(code)
    os._exit(code)


def _atexit_pending() -> bool:
    import atexit  # built in: no import cost

    count = getattr(atexit, "_ncallbacks", None)
    return count is None or count() > 0


def _report(args: list[str], prog: str, stdin_fd: int) -> int:
    return errors.run_main(prog, lambda: run(args, prog, stdin_fd))
