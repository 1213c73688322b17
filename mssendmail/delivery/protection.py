"""Mailbox protection before a send: the daily recipient budget and pacing.

Job: one hook for attempt.py. Before a message goes to Graph,

1. pacing (MAILBOX_RATE messages a minute per mailbox; unset = none): the
   message takes the mailbox's next free slot in state/ (shared by every
   worker process). A slot in the future defers the message to it; the
   slot stays reserved in its meta/ record, so it goes at that time
   without queueing again. A reserved slot older than STALE_SLOT (the
   worker was down) is given up and a new one taken, so a backlog does not
   go out in one burst after a restart.
2. the budget (DAILY_RECIPIENT_LIMIT recipients per mailbox in a rolling
   24 hours, default 10,000, Exchange Online's limit): the recipients are
   counted before the send. Past the limit the message is deferred until
   the window has room. It is never dead-lettered for this, and the wait
   counts no attempt. At 80% one warning is logged per crossing.

A send that Graph certainly refused (a 4xx, a connection never made) gives
its recipients back; an unknown outcome keeps them (they may have gone).
The per-mailbox limit of 4 requests in flight (attempt.MailboxGate) holds
on top of both.

The reason a message waits is kept in its meta/ record (``wait``), where
`mssendmail-queue list` and `stats` show it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mssendmail.delivery import outcome
from mssendmail.errors import DeliveryError
from mssendmail.logs import kv
from mssendmail.spool import budget, meta
from mssendmail.spool.claim import Claim

if TYPE_CHECKING:
    from mssendmail.delivery.attempt import Context

log = logging.getLogger("mssendmail.delivery.protection")

WAIT = "wait"  # the meta/ key
SLOT = "pace_slot"
BUDGET_CODE = "DailyRecipientLimit"
PACING_CODE = "MailboxRate"


def rate_interval(ctx: Context) -> float | None:
    text = ctx.cfg.get("MAILBOX_RATE")
    if not text:
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        from mssendmail.errors import ConfigError

        raise ConfigError(f"MAILBOX_RATE={text!r} is not a number of messages per minute > 0")
    return 60.0 / rate


def validate(ctx: Context) -> None:
    """MAILBOX_RATE and DAILY_RECIPIENT_LIMIT are usable (ConfigError: the worker exits 78)."""
    from mssendmail.errors import ConfigError

    rate_interval(ctx)
    if ctx.cfg.integer("DAILY_RECIPIENT_LIMIT") < 1:
        raise ConfigError("DAILY_RECIPIENT_LIMIT must be a whole number of recipients >= 1")


def before_send(
    ctx: Context, held: Claim, state: dict[str, Any], mailbox: str, recipients: int
) -> str | None:
    """Whether the message must wait: "deferred" (done here), or None to send it now.

    When the state files cannot be written (a full disk) the message goes
    anyway, with a warning: mail must not stop for its bookkeeping, and a
    full disk is also when sent_unrecorded() keeps delivery going.
    """
    try:
        return _check(ctx, held, state, mailbox, recipients)
    except OSError as exc:
        log.warning(
            kv(id=held.queue_id, event="limits-unavailable", error=exc.strerror or str(exc))
        )
        state.pop(WAIT, None)
        return None


def _check(
    ctx: Context, held: Claim, state: dict[str, Any], mailbox: str, recipients: int
) -> str | None:
    now = ctx.now()
    interval = rate_interval(ctx)
    if interval is not None and not _has_slot(state, now, interval):
        slot = budget.pace_slot(ctx.spool, mailbox, interval, now)
        if slot > now:
            state[SLOT] = slot
            why = f"MAILBOX_RATE {ctx.cfg.get('MAILBOX_RATE')}/min for {mailbox}: next slot"
            return _wait(ctx, held, state, PACING_CODE, why, slot)
    state.pop(SLOT, None)
    return _reserve(ctx, held, state, mailbox, recipients, now)


def _reserve(
    ctx: Context, held: Claim, state: dict[str, Any], mailbox: str, recipients: int, now: float
) -> str | None:
    """Take the recipients from the mailbox's daily budget, or wait for the window."""
    limit = ctx.cfg.integer("DAILY_RECIPIENT_LIMIT")
    verdict = budget.reserve(ctx.spool, mailbox, recipients, limit, now)
    if not verdict.ok:
        why = (
            f"daily recipient limit reached for {mailbox}: {verdict.used} of {limit} "
            "in the last 24 h; waiting for the window"
        )
        log.warning(
            kv(
                id=held.queue_id,
                event="budget-wait",
                mailbox=mailbox,
                used=verdict.used,
                limit=limit,
                until=int(verdict.until),
            )
        )
        return _wait(ctx, held, state, BUDGET_CODE, why, verdict.until)
    before = verdict.used - recipients
    if before < budget.WARN_AT * limit <= verdict.used:
        log.warning(
            kv(
                event="budget-warning",
                mailbox=mailbox,
                used=verdict.used,
                limit=limit,
                hint="80% of the daily recipient limit used; mail past it waits",
            )
        )
    state.pop(WAIT, None)
    return None


def after_failure(ctx: Context, mailbox: str, recipients: int, exc: DeliveryError) -> None:
    """A refusal gives the recipients back; an unknown outcome keeps them."""
    if exc.outcome_unknown:
        return
    try:
        budget.refund(ctx.spool, mailbox, recipients, ctx.now())
    except OSError as err:
        log.warning(kv(event="budget-refund-failed", mailbox=mailbox, error=str(err)))


def _has_slot(state: dict[str, Any], now: float, interval: float) -> bool:
    slot = state.get(SLOT)
    if not isinstance(slot, (int, float)) or isinstance(slot, bool):
        return False
    return slot <= now + 0.001 and now - slot < max(60.0, 2 * interval)


def _wait(
    ctx: Context, held: Claim, state: dict[str, Any], code: str, why: str, until: float
) -> str:
    state[WAIT] = {"time": ctx.now(), "code": code, "message": why, "until": until}
    if code == BUDGET_CODE:
        meta.add_event(state, ctx.now(), "budget-wait", why)
    outcome.defer(ctx.spool, held, state, until)
    return "deferred"
