"""Rows for `mssendmail-queue list`, `mailq`/`-bp` and `stats`: one per message.

Reads every state directory of the spool and, for each message, only the
record's footer and envelope (never the whole file: a listing of thousands
of large messages must stay cheap), its meta/<id>.json, the dead-letter
reason and, for delivered mail, the sent/<id>.json record.

Spool files are hostile input (anyone can put anything into maildrop/):
files are opened without following links, anything that is not a regular
file with a valid footer and envelope is listed with what can be known, and
every string is stripped of control characters before it reaches a
terminal (see ``printable``), so an envelope cannot drive the terminal.

The field names of ``Row.as_json()`` are a stable interface (docs/operations.md, queue).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mssendmail.errors import PermissionDenied, SpoolError
from mssendmail.spool import meta, record, status
from mssendmail.spool.layout import (
    ACTIVE,
    DEAD,
    DEFERRED,
    HOLD,
    MAILDROP,
    QUEUE,
    SENT,
    Spool,
    entry_id,
    is_id,
)
from mssendmail.spool.record import read_envelope

# What users see and type: maildrop and queue are both "queued".
QUEUED = "queued"
SENT_STATE = "sent"
STATES = (QUEUED, ACTIVE, DEFERRED, HOLD, DEAD, SENT_STATE)
AREAS_OF: dict[str, tuple[str, ...]] = {
    QUEUED: (MAILDROP, QUEUE),
    ACTIVE: (ACTIVE,),
    DEFERRED: (DEFERRED,),
    HOLD: (HOLD,),
    DEAD: (DEAD,),
    SENT_STATE: (),
}
DEFAULT_STATES = (QUEUED, ACTIVE, DEFERRED, HOLD, DEAD)
NO_ACCESS = "run as root or a member of group mssendmail"


@dataclass
class Row:
    """One message as the listing shows it; times are Unix seconds."""

    id: str
    state: str
    area: str
    submitted: float | None = None
    next_attempt: float | None = None
    attempts: int = 0
    size: int | None = None
    sender: str = ""
    user: str = ""
    recipients: list[str] = field(default_factory=list)
    error_code: str | None = None
    error: str | None = None
    sent: float | None = None
    damaged: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The stable --json object (documented in docs/operations.md)."""
        return {
            "id": self.id,
            "state": self.state,
            "submitted": self.submitted,
            "next_attempt": self.next_attempt,
            "attempts": self.attempts,
            "size": self.size,
            "sender": self.sender,
            "recipients": self.recipients,
            "error_code": self.error_code,
            "error": self.error,
            "sent": self.sent,
            "damaged": self.damaged,
        }


def printable(text: object, limit: int = 998) -> str:
    """Text safe for a terminal: control characters (ESC above all) become '?'."""
    value = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in value)


def require_access(spool: Spool) -> None:
    """Exit 77 for users who cannot read the spool, 75 when there is none."""
    try:
        os.listdir(spool.dir(QUEUE))
    except PermissionError:
        raise PermissionDenied(NO_ACCESS) from None
    except FileNotFoundError:
        raise SpoolError(
            f"there is no spool at {spool.root}; check QUEUE_DIR or run "
            "'mssendmail-queue init' as root"
        ) from None


def parse_states(text: str) -> tuple[str, ...]:
    """--state queued,deferred / all; ValueError names what is wrong."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if "all" in names:
        return STATES
    bad = [n for n in names if n not in STATES]
    if bad or not names:
        raise ValueError(
            f"unknown state {', '.join(bad) or repr(text)}; use {', '.join(STATES)} or all"
        )
    return tuple(n for n in STATES if n in names)


# A queue id starts with its submission second (layout.new_id), but anyone
# can name a maildrop/ file: an id that claims a time before mssendmail
# existed, or a day or more in the future, was not minted by it.
ID_FLOOR = 1_735_689_600  # 2025-01-01
ID_SLACK = 86400.0


def id_time(queue_id: str, now: float | None = None) -> float | None:
    """The submission second encoded in a queue id, or None when it is not plausible."""
    when = float(int(queue_id[:8], 16))
    now = time.time() if now is None else now
    return when if ID_FLOOR <= when <= now + ID_SLACK else None


def _number(value: object) -> float | None:
    """A time from a record, or None when it is not one (NaN, 1e20: hostile or broken)."""
    if not record.time_ok(value):
        return None
    return float(value)  # type: ignore[arg-type]  # time_ok checked the type


def _text_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [printable(v) for v in value if isinstance(v, str)]


def error_fields(err: object) -> tuple[str | None, str | None]:
    """(short code, message) of a last_error or reason record."""
    if not isinstance(err, dict):
        return None, None
    code = err.get("code") or err.get("status") or err.get("class")
    message = err.get("message")
    return (
        printable(code, 60) if code else None,
        printable(message, 500) if isinstance(message, str) else None,
    )


def message_row(spool: Spool, queue_id: str, area: str) -> Row:
    """The row of one message still in the queue (any state but sent)."""
    state = QUEUED if area in (MAILDROP, QUEUE) else area
    row = Row(id=queue_id, state=state, area=area, submitted=id_time(queue_id))
    path = spool.path(area, queue_id)
    try:
        envelope, size = read_envelope(path)
    except record.CorruptRecord as exc:
        row.damaged = str(exc)
    except FileNotFoundError:
        raise
    else:
        row.size = size
        row.sender = printable(envelope.get("sender", ""))
        row.user = printable(envelope.get("user", ""))
        row.recipients = _text_list(envelope.get("recipients"))
        row.submitted = _number(envelope.get("time")) or row.submitted
    state_record = meta.read(spool, queue_id)
    row.attempts = meta.attempts(state_record)
    row.error_code, row.error = error_fields(state_record.get("last_error"))
    wait = state_record.get("wait")  # budget or pacing (mssendmail.delivery.protection)
    if area == DEFERRED and isinstance(wait, dict):
        row.error_code, row.error = error_fields(wait)
    if area == DEFERRED:
        try:
            row.next_attempt = spool.due_at(queue_id)
        except FileNotFoundError:
            pass
    if area == DEAD:
        reason = meta.read_json(spool.reason_path(DEAD, queue_id))
        if reason:
            code, message = error_fields(reason)
            row.error_code, row.error = code or row.error_code, message or row.error
            attempts = reason.get("attempts")
            if isinstance(attempts, int) and attempts > row.attempts:
                row.attempts = attempts
    return row


def sent_row(spool: Spool, queue_id: str) -> Row | None:
    """The row of a sent message; a sent one whose record is not written yet shows too."""
    info = meta.read_json(spool.sent_path(queue_id))
    if not info:
        if not status.is_sent(spool, queue_id):
            return None
        info = {"note": "sent; its record is being written"}
    size = info.get("size")
    attempts = info.get("attempts")
    return Row(
        id=queue_id,
        state=SENT_STATE,
        area=SENT,
        submitted=_number(info.get("submitted")) or id_time(queue_id),
        attempts=attempts if isinstance(attempts, int) else 0,
        size=size if isinstance(size, int) else None,
        sender=printable(info.get("sender", "")),
        recipients=_text_list(info.get("recipients")),
        sent=_number(info.get("sent")),
    )


def sent_ids(spool: Spool) -> list[str]:
    try:
        names = os.listdir(spool.dir(SENT))
    except FileNotFoundError:
        return []
    return sorted(qid for qid in map(entry_id, names) if qid is not None)


def collect(spool: Spool, states: Iterable[str] = DEFAULT_STATES) -> list[Row]:
    """Rows of every message in the given states, oldest first.

    A message the worker moves while we look may be missed or seen twice in a
    listing; it is a snapshot, and the last state wins.
    """
    require_access(spool)
    wanted = set(states)
    rows: dict[str, Row] = {}
    for state in STATES:
        if state not in wanted:
            continue
        if state == SENT_STATE:
            for queue_id in sent_ids(spool):
                row = sent_row(spool, queue_id)
                if row is not None:
                    rows[queue_id] = row
            continue
        for area in AREAS_OF[state]:
            try:
                ids = spool.ids(area)
            except PermissionError:
                continue  # maildrop/ is unreadable to the group on some setups
            for queue_id in ids:
                try:
                    rows[queue_id] = message_row(spool, queue_id, area)
                except FileNotFoundError:
                    continue  # moved on while we looked
                except PermissionError:
                    rows[queue_id] = Row(
                        id=queue_id,
                        state=state,
                        area=area,
                        submitted=id_time(queue_id),
                        damaged="not readable",
                    )
    return sorted(rows.values(), key=lambda r: (r.submitted or 0.0, r.id))


def find(spool: Spool, queue_id: str) -> Row | None:
    """The row of one id in whatever state it is, or None."""
    require_access(spool)
    for _ in range(3):  # it may move while we look
        area = spool.locate(queue_id)
        if area is None:
            break
        try:
            return message_row(spool, queue_id, area)
        except FileNotFoundError:
            continue
    if is_id(queue_id):
        return sent_row(spool, queue_id)
    return None


# -- rendering -------------------------------------------------------------

WIDTH = 80
COLORS = {
    QUEUED: "",
    ACTIVE: "\033[36m",
    DEFERRED: "\033[33m",
    HOLD: "\033[35m",
    DEAD: "\033[31m",
    SENT_STATE: "\033[32m",
}
RESET = "\033[0m"


def use_color(stream: Any) -> bool:
    """Color only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1024:
        return str(size)
    value = size / 1024
    for unit in "KMG":
        if value < 1024 or unit == "G":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_time(when: float | None, unknown: str = "-") -> str:
    if when is None:
        return unknown
    if not record.time_ok(when):
        return "?"
    return time.strftime("%b %d %H:%M", time.localtime(when))


def human_delta(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def next_text(row: Row, now: float) -> str:
    if row.state == HOLD:
        return "held"
    if row.state == ACTIVE:
        return "sending"
    if row.state == SENT_STATE:
        return "done"
    if row.state == DEAD:
        return "never"
    if row.next_attempt is None or row.next_attempt <= now:
        return "now"
    return "in " + human_delta(row.next_attempt - now)


def shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..."


def wrap(first: str, text: str, indent: int, width: int = WIDTH) -> list[str]:
    """`first` followed by text, wrapped to width with continuation lines indented."""
    import textwrap

    return textwrap.wrap(
        first + text,
        width=width,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def recipients_text(recipients: list[str], width: int) -> str:
    """As many recipients as fit in width, then '+N more'."""
    if not recipients:
        return "(no recipients)"
    out = ""
    for i, rcpt in enumerate(recipients):
        joined = f"{out}, {rcpt}" if out else rcpt
        rest = len(recipients) - i - 1
        if len(joined) + len(f" +{rest} more" if rest else "") <= width:
            out = joined
            continue
        more = len(recipients) - i
        if out:
            return f"{out} +{more} more"
        tail = f" +{more - 1} more" if more > 1 else ""
        return shorten(rcpt, width - len(tail)) + tail
    return out


HEADER = f"{'ID':<18} {'STATE':<8} {'SUBMITTED':<12} {'NEXT':<7} {'TRY':>3} {'SIZE':>5} FROM"


def render(rows: list[Row], now: float | None = None, color: bool = False) -> list[str]:
    """Two lines per message (data, then recipients and error), within 80 columns."""
    if not rows:
        return ["queue is empty"]
    now = time.time() if now is None else now
    lines = [HEADER]
    for row in rows:
        sender = row.sender or "<>"
        head = (
            f"{row.id:<18} {row.state:<8} {human_time(row.submitted, '?'):<12} "
            f"{next_text(row, now):<7} {row.attempts:>3} {human_size(row.size):>5} "
        )
        head += shorten(sender, WIDTH - len(head))
        if color and COLORS.get(row.state):
            start = 19
            head = (
                head[:start]
                + COLORS[row.state]
                + head[start : start + 8]
                + RESET
                + head[start + 8 :]
            )
        lines.append(head)
        error = ""
        if row.damaged:
            error = f"  (damaged: {row.damaged})"
        elif row.error_code:
            error = f"  ({row.error_code})"
        error = shorten(error, 30)
        indent = " " * 19 + "to "
        lines.append(
            indent + recipients_text(row.recipients, WIDTH - len(indent) - len(error)) + error
        )
    total = len(rows)
    lines.append(f"-- {total} message{'s' if total != 1 else ''}")
    return lines


def json_lines(rows: list[Row]) -> list[str]:
    return [json.dumps(row.as_json(), sort_keys=True) for row in rows]
