"""DEAD_LETTER_NOTIFY: queue a short notice when a message is dead-lettered.

The notice goes through the normal spool, so it is retried like any mail;
a notice about a notice is never sent (notice.is_notice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mssendmail.config import Config
from mssendmail.spool.layout import Spool
from mssendmail.submission.writer import Submission, make_envelope

Notifier = Callable[[bytes, dict[str, Any], str, dict[str, Any]], None]


def notifier(cfg: Config, spool: Spool) -> Notifier | None:
    address = cfg.get("DEAD_LETTER_NOTIFY")
    if not address:
        return None

    def notify(
        message: bytes, envelope: dict[str, Any], queue_id: str, reason: dict[str, Any]
    ) -> None:
        from mssendmail.delivery.notice import build_notice, is_notice

        if is_notice(message):
            return
        body = build_notice(message, queue_id, reason, cfg)
        with Submission(spool, cfg.max_message_size) as sub:
            sub.write(body)
            sub.commit(make_envelope("", [address], source="notice"))

    return notify
