"""Submission: stream one message into maildrop/ and commit it durably.

The only order: exclusive create of ``maildrop/tmp.<id>`` (mode 0640, flock
held), write, append envelope and checksum footer, fsync, rename to
``maildrop/<id>``, fsync the directory. Only after that may a caller report
success. Any error or signal before the rename removes the temp file; after
kill -9 the temp file stays behind, unlocked, and the worker removes it.

Used by ``mssendmail`` (stdin and -bs) and ``mssendmail-smtpd``; it needs no
secrets and no network. Standard library only: this is the fast path.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import time

from mssendmail.errors import DataError, SpoolError
from mssendmail.spool.layout import MAILDROP, Spool, new_id
from mssendmail.spool.record import VERSION, RecordWriter

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is slow to import; annotations are strings anyway
    from typing import Any

FILE_MODE = 0o640


def spool_error(spool: Spool, exc: OSError) -> SpoolError:
    """The one-line message for a spool that cannot take the message."""
    where = spool.dir(MAILDROP)
    if exc.errno is not None and exc.strerror and "space" in exc.strerror.lower():
        hint = "free disk space on the file system that holds it"
    else:
        hint = "check that QUEUE_DIR is right and run 'mssendmail-queue init' as root"
    return SpoolError(f"cannot queue the message in {where}: {exc.strerror or exc}; {hint}")


def make_envelope(
    sender: str,
    recipients: list[str],
    *,
    from_headers: bool = False,
    argv_recipients: list[str] | None = None,
    full_name: str | None = None,
    source: str = "sendmail",
    now: float | None = None,
) -> dict[str, Any]:
    """The envelope a record carries; uid and user are claims the worker re-checks."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {
        "v": VERSION,
        "sender": sender,
        "recipients": recipients,
        "argv_recipients": argv_recipients if argv_recipients is not None else [],
        "from_headers": from_headers,
        "full_name": full_name,
        "uid": uid,
        "user": user,
        "time": time.time() if now is None else now,
        "source": source,
    }


def check_quota(spool: Spool, uid: int) -> None:
    """SpoolError (exit 75) when the worker lists this uid as at MAX_QUEUED_PER_USER."""
    listed = spool.over_cap_uids()
    if str(uid).encode() in listed:
        raise SpoolError(
            "you have as many messages waiting as MAX_QUEUED_PER_USER allows; "
            "try again later, when some have been sent"
        )


class Submission:
    """One message on its way into maildrop/."""

    def __init__(self, spool: Spool, max_size: int) -> None:
        self.spool = spool
        self.max_size = max_size
        self.id = new_id()
        self.temp = spool.submission_temp(self.id)
        self.fd = -1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.temp, flags, FILE_MODE)
            # Locked for as long as we live: the worker deletes only unlocked temp files.
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.fchmod(self.fd, FILE_MODE)  # the caller's umask must not hide it from the worker
        except OSError as exc:
            self.abort()
            raise spool_error(spool, exc) from exc
        self.writer = RecordWriter(self.fd)

    def __enter__(self) -> Submission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        """Append message bytes; past max_size the message is refused and removed."""
        if self.writer.length + len(data) > self.max_size:
            self.abort()
            raise DataError(
                f"message exceeds the size limit of {self.max_size} bytes (MAX_MESSAGE_SIZE); "
                "send a smaller message"
            )
        try:
            self.writer.write(data)
        except OSError as exc:
            self.abort()
            raise spool_error(self.spool, exc) from exc

    @property
    def size(self) -> int:
        return self.writer.length

    def commit(self, envelope: dict[str, Any]) -> str:
        """Make the message durable under its final name; returns the queue id."""
        try:
            self.writer.finish(envelope)
            self.spool.submit(self.id, self.fd)  # fsync, rename
            self.temp = ""
            self.spool.sync_submitted(self.fd)
        except OSError as exc:
            self.abort()
            if not self.temp:
                # Renamed but not known durable: take it back rather than
                # report a failure for a message the worker may still send.
                self.spool.withdraw(self.id, temp=False)
            raise spool_error(self.spool, exc) from exc
        os.close(self.fd)
        self.fd = -1
        self.spool.wake()
        return self.id

    def abort(self) -> None:
        """Remove the unfinished message; safe to call more than once."""
        if self.temp:
            self.spool.withdraw(self.id, temp=True)
            self.temp = ""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
