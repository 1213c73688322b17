"""The one answer to "is it sent?", for the worker and every admin command.

A message is sent once it has an entry in sent/: its record sent/<id>.json,
or sent/<id> itself (parked: the message renamed there right after Graph's
202, before its record was written, or kept there when the disk was full).
The rename into sent/ is the no-resend promise (delivery/outcome.py), so the
parked name counts as sent as much as the record does.
"""

from __future__ import annotations

import os

from mssendmail.spool.layout import SENT, Spool

SENT_STATE = "sent"


def is_sent(spool: Spool, queue_id: str) -> bool:
    # sent() renames sent/<id> to sent/<id>.json: look in that order, or the
    # second rename can slip between the two looks and a sent message reads
    # as unknown.
    parked = os.path.lexists(spool.path(SENT, queue_id))
    return parked or os.path.lexists(spool.sent_path(queue_id))


def where(spool: Spool, queue_id: str) -> str | None:
    """The area an unsent message is in, "sent", or None when it is unknown (deleted)."""
    area = spool.locate(queue_id)
    if area is not None:
        return area
    # Checked after locate(): the message may have moved into sent/ meanwhile.
    return SENT_STATE if is_sent(spool, queue_id) else None
