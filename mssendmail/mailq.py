"""mailq / mssendmail -bp -- list the queue in Postfix's format.

NAME
    mailq, mssendmail -bp

DESCRIPTION
    One entry per queued message, oldest first: queue id (``*`` = being
    delivered now, ``!`` = held by an admin), message size, arrival time,
    envelope sender (or the submitting user when no -f was given), the last
    delivery error from meta/<id>.json in parentheses, and the recipients.
    Areas listed: maildrop (not yet picked up), queue, active, deferred and
    hold. mssendmail-queue has the full admin view.

READS
    QUEUE_DIR/{maildrop,queue,active,deferred,hold}/<id>: only each
    record's footer and envelope, never the message body, so listing
    thousands of large messages stays cheap; QUEUE_DIR/meta/<id>.json.

SECURITY
    Queue files are hostile input: opened without following links, only
    regular files, every shown string stripped of control characters so an
    envelope cannot drive the terminal. Only root and members of the
    mssendmail group can list the queue (the directories are not readable
    by others); anyone else gets exit 77.

EXIT STATUS
    0 listed (or empty); 75 no spool at QUEUE_DIR; 77 permission denied.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, TextIO

from mssendmail import record
from mssendmail.errors import PermissionDenied, SpoolError
from mssendmail.spool import ACTIVE, DEFERRED, HOLD, MAILDROP, QUEUE, Spool

AREAS = (MAILDROP, QUEUE, ACTIVE, DEFERRED, HOLD)
MARKS = {ACTIVE: "*", HOLD: "!"}
HEADER = "-Queue ID-          --Size-- ----Arrival Time---- -Sender/Recipient-------"
INDENT = " " * 51


def printable(text: object, limit: int = 200) -> str:
    """A hostile string made safe for one terminal line."""
    shown = "".join(c if c.isprintable() else "?" for c in str(text))
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def read_envelope(path: str) -> tuple[dict[str, Any], int]:
    """(envelope, message size) from the record's tail; ValueError/OSError if it is not one."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size < record.FOOTER_LEN:
            raise ValueError("too short to be a record")
        tail = os.pread(fd, record.FOOTER_LEN, st.st_size - record.FOOTER_LEN)
        message_len, envelope_len, _ = record.parse_footer(tail, st.st_size)
        raw = os.pread(fd, envelope_len, message_len)
    finally:
        os.close(fd)
    envelope = json.loads(raw)
    if not isinstance(envelope, dict):
        raise ValueError("envelope is not an object")
    return envelope, message_len


def last_error(spool: Spool, queue_id: str) -> str:
    try:
        with open(spool.meta_path(queue_id), "rb") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return ""
    err = state.get("last_error") if isinstance(state, dict) else None
    if isinstance(err, dict):
        return printable(err.get("message", ""))
    return printable(err) if isinstance(err, str) else ""


def entry(spool: Spool, area: str, queue_id: str) -> tuple[list[str], int]:
    """The lines of one message and its size (0 if unreadable)."""
    try:
        envelope, size = read_envelope(spool.path(area, queue_id))
    except (OSError, ValueError) as exc:
        when = time.ctime(int(queue_id[:8], 16))
        line = f"{queue_id + MARKS.get(area, ''):<19} {'?':>8} {when[:19]:<20} (unreadable: {exc})"
        return [line], 0
    stamp = envelope.get("time")
    when = time.ctime(stamp if isinstance(stamp, (int, float)) else int(queue_id[:8], 16))
    sender = envelope.get("sender") or f"{envelope.get('user', '?')} (local user)"
    lines = [f"{queue_id + MARKS.get(area, ''):<19} {size:>8} {when[:19]:<20} {printable(sender)}"]
    error = last_error(spool, queue_id)
    if error:
        lines.append(f"{INDENT}({error})")
    rcpts = envelope.get("recipients")
    for rcpt in rcpts if isinstance(rcpts, list) else []:
        lines.append(f"{INDENT}{printable(rcpt)}")
    return lines, size


def list_queue(spool: Spool, out: TextIO) -> int:
    """Write the listing; returns the exit status."""
    if not os.path.isdir(spool.root):
        raise SpoolError(
            f"no spool at {spool.root}; check QUEUE_DIR or run 'mssendmail-queue init' as root"
        )
    found: list[tuple[str, str]] = []
    for area in AREAS:
        if not os.access(spool.dir(area), os.R_OK | os.X_OK):
            raise PermissionDenied(
                f"cannot read the queue in {spool.dir(area)}: permission denied; "
                "run mailq as root or as a member of the mssendmail group"
            )
        found.extend((queue_id, area) for queue_id in spool.ids(area))
    if not found:
        out.write("Mail queue is empty\n")
        return 0
    out.write(HEADER + "\n")
    total = 0
    for queue_id, area in sorted(found):
        lines, size = entry(spool, area, queue_id)
        out.write("\n".join(lines) + "\n\n")
        total += size
    count = len(found)
    out.write(f"-- {(total + 1023) // 1024} Kbytes in {count} Request{'s' * (count != 1)}.\n")
    return 0
