"""mailq / mssendmail -bp -- list the queue in Postfix's format.

NAME
    mailq, mssendmail -bp

DESCRIPTION
    One entry per message not yet delivered, oldest first: queue id (``*`` =
    being delivered now, ``!`` = held by an admin), message size, arrival
    time, envelope sender (or the submitting user when no -f was given), the
    last delivery error in parentheses, and the recipients. The rows are the
    same ones ``mssendmail-queue list`` shows (mssendmail.admin.listing), minus
    dead letters, which Postfix's mailq does not show either.

READS
    QUEUE_DIR: each record's footer and envelope (never the body), and
    meta/<id>.json, through mssendmail.admin.listing.

SECURITY
    Only root and members of the mssendmail group can list the queue; anyone
    else gets exit 77. Shown strings are stripped of control characters.

EXIT STATUS
    0 listed (or empty); 75 no spool at QUEUE_DIR; 77 permission denied.
"""

from __future__ import annotations

import time
from typing import TextIO

from mssendmail.admin.listing import QUEUED, Row, collect
from mssendmail.spool import record
from mssendmail.spool.layout import ACTIVE, DEFERRED, HOLD, Spool

STATES = (QUEUED, ACTIVE, DEFERRED, HOLD)
MARKS = {ACTIVE: "*", HOLD: "!"}
HEADER = "-Queue ID-          --Size-- ----Arrival Time---- -Sender/Recipient-------"
INDENT = " " * 51


def entry(row: Row) -> list[str]:
    """The lines of one message, Postfix style."""
    mark = MARKS.get(row.state, "")
    when = time.ctime(row.submitted)[:19] if record.time_ok(row.submitted) else "?"
    if row.damaged:
        return [f"{row.id + mark:<19} {'?':>8} {when:<20} (unreadable: {row.damaged})"]
    sender = row.sender or f"{row.user or '?'} (local user)"
    lines = [f"{row.id + mark:<19} {row.size or 0:>8} {when:<20} {sender}"]
    if row.error:
        lines.append(f"{INDENT}({row.error})")
    lines.extend(f"{INDENT}{rcpt}" for rcpt in row.recipients)
    return lines


def list_queue(spool: Spool, out: TextIO) -> int:
    """Write the listing; returns the exit status."""
    rows = collect(spool, STATES)
    if not rows:
        out.write("Mail queue is empty\n")
        return 0
    out.write(HEADER + "\n")
    for row in rows:
        out.write("\n".join(entry(row)) + "\n\n")
    total = sum(row.size or 0 for row in rows)
    count = len(rows)
    out.write(f"-- {(total + 1023) // 1024} Kbytes in {count} Request{'s' * (count != 1)}.\n")
    return 0
