"""Idempotent retries: ask Graph before sending again a message whose outcome is unknown.

Job: Graph answers sendMail with 202 before it processes the message, and
a 5xx, a 429 without Retry-After, a timeout or a reset can come back even
though Exchange goes on to deliver it. A message found claimed by a worker
that died may have been sent too, and so may one whose send raised an
unexpected (unclassified) exception. Such an attempt is recorded as
``unknown`` in the message's meta/ record (durably: write_atomic) before the
message is deferred or put back, and the next attempt first looks it up:

* large messages whose /send was unknown: the draft. Gone = sent (the
  send consumed it), still there = not sent (it is deleted, and the
  message is sent afresh);
* everything else: the sending mailbox's Sent Items, by Message-ID
  (mssendmail.graph.sentitems; needs Mail.ReadBasic.All). Found = sent:
  the message is recorded as sent with ``outcome=sent-earlier`` in the log.
  Not found = it is sent again.

Timing assumption (SENT_ITEMS_DELAY, default 5m): a message that Exchange
accepted has its Sent Items copy within SENT_ITEMS_DELAY of the attempt.
The copy normally appears within seconds; 5 minutes is a generous margin
for a slow backend. The retry comes on the usual backoff schedule and looks
at once (most copies are there by then); a lookup that finds nothing
earlier than SENT_ITEMS_DELAY after the attempt defers the message to that
moment and looks again. So the first resend waits at least that long, and
a copy that takes longer is the duplicate window that remains.

Without the permission (Graph answers 403) the worker behaves as it did
before: it sends again at once. The denial is remembered per mailbox for
DENIED_RECHECK seconds and written to state/sentitems-lookup.json so that
`mssendmail-queue check` can explain it.

A lookup that fails for another reason (5xx, network) defers the message
with the usual backoff and keeps it unknown; after MAX_AGE it is sent
again without one, so a lookup that never works cannot hold mail forever.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from mssendmail.delivery import outcome
from mssendmail.delivery.retry import backoff
from mssendmail.errors import DeliveryError
from mssendmail.logs import kv
from mssendmail.spool import meta, statefiles
from mssendmail.spool.claim import Claim
from mssendmail.spool.claim import recover as recover_claims
from mssendmail.spool.layout import ACTIVE, Spool

if TYPE_CHECKING:
    from mssendmail.delivery.attempt import Context
    from mssendmail.delivery.prepare import Prepared

log = logging.getLogger("mssendmail.delivery.idempotency")

UNKNOWN = "unknown"  # the meta/ key
DENIED_RECHECK = 600.0  # a granted permission is noticed this soon

_lock = threading.Lock()
_denied: dict[str, float] = {}  # mailbox -> until when we do not ask


def delay(ctx: Context) -> float:
    return ctx.cfg.seconds("SENT_ITEMS_DELAY")


def can_look(ctx: Context, mailbox: str) -> bool:
    """Whether a lookup may work: a transport that has one, no recent 403."""
    if getattr(ctx.transport, "sent_items", None) is None:
        return False
    with _lock:
        return _denied.get(mailbox.lower(), 0.0) <= ctx.now()


def note_failure(ctx: Context, state: dict[str, Any], exc: DeliveryError, started: float) -> None:
    """Record an unknown outcome in state; the caller's defer writes it (fsync, rename)."""
    if not exc.outcome_unknown:
        state.pop(UNKNOWN, None)
        return
    now = ctx.now()
    previous = state.get(UNKNOWN)
    since = started
    if isinstance(previous, dict) and isinstance(previous.get("since"), (int, float)):
        since = min(since, float(previous["since"]))
    state[UNKNOWN] = {"time": now, "since": since, "why": str(exc)[:300]}
    if exc.draft_id:
        state[UNKNOWN]["draft_id"] = exc.draft_id
    meta.add_event(state, now, "unknown", "the attempt's outcome is unknown; look before resending")


def recover(spool: Spool, now: float) -> list[str]:
    """Put back what dead workers left in active/, marked unknown first."""
    return recover_claims(spool, on_recover=lambda qid: mark_recovered(spool, qid, now))


def mark_recovered(spool: Spool, queue_id: str, now: float) -> None:
    """A dead worker's claim: its request may have reached Graph."""
    if outcome.already_sent(spool, queue_id):
        return
    try:
        since = os.stat(spool.path(ACTIVE, queue_id)).st_ctime  # the claim's rename
    except FileNotFoundError:
        return
    state = meta.read(spool, queue_id)
    _mark(state, now, since, "claimed by a worker that died")
    meta.write(spool, queue_id, state)


def note_crash(
    ctx: Context,
    queue_id: str,
    state: dict[str, Any],
    started: float,
    why: str = "the send raised an unexpected error",
) -> None:
    """An unexpected exception inside or after the send: its request may have reached Graph.

    Written to meta/ at once (poison.crashed re-reads it there), so the
    crash's retry looks before it resends, as after a dead worker's claim.
    """
    _mark(state, ctx.now(), started, why)
    meta.write(ctx.spool, queue_id, state)


def _mark(state: dict[str, Any], now: float, since: float, why: str) -> None:
    previous = state.get(UNKNOWN)
    if isinstance(previous, dict) and isinstance(previous.get("since"), (int, float)):
        since = min(since, float(previous["since"]))
    state[UNKNOWN] = {"time": now, "since": since, "why": why}
    meta.add_event(state, now, "unknown", f"{why}; look before resending")


def before_send(
    ctx: Context,
    held: Claim,
    state: dict[str, Any],
    prepared: Prepared,
    record: dict[str, Any],
) -> str | None:
    """What happened: "sent" or "deferred" (handled here), or None to send it now."""
    unknown = state.get(UNKNOWN)
    if not isinstance(unknown, dict):
        return None
    mailbox, qid, now = prepared.mailbox, held.queue_id, ctx.now()
    if not can_look(ctx, mailbox):
        state.pop(UNKNOWN, None)
        return None
    since = _number(unknown.get("since"), now)
    draft_id = unknown.get("draft_id")
    from mssendmail.graph.sentitems import usable_message_id

    if not draft_id and not usable_message_id(prepared.message_id):
        state.pop(UNKNOWN, None)  # nothing to look up by: sent again, as before
        meta.add_event(state, now, "lookup", "the Message-ID cannot be looked up; sending again")
        return None
    try:
        with ctx.gate.slot(mailbox):
            landed = _landed(ctx, mailbox, prepared.message_id, since, draft_id)
    except DeliveryError as exc:
        return _lookup_failed(ctx, held, state, exc, mailbox)
    how = "draft" if draft_id else "lookup"
    if landed:
        log.info(kv(**_info(record), outcome="sent-earlier", how=how))
        outcome.sent(ctx.spool, held, {**record, "sent": now, "outcome": "sent-earlier"})
        from mssendmail.delivery import cleanup

        cleanup.schedule(ctx, qid, mailbox, prepared.message_id, since)
        return "sent"
    return _not_landed(ctx, held, state, since, how, now)


def _not_landed(
    ctx: Context, held: Claim, state: dict[str, Any], since: float, how: str, now: float
) -> str | None:
    """The lookup found nothing: look again later while a copy may be on its way, else send."""
    ready = max(since, _number(state[UNKNOWN].get("time"), now)) + delay(ctx)
    if now < ready and how != "draft":
        # Not there yet, but the copy may still be on its way.
        meta.add_event(state, now, "lookup", "not in Sent Items yet; looking again later")
        outcome.defer(ctx.spool, held, state, ready)
        return "deferred"
    log.info(kv(id=held.queue_id, event="lookup", found=False, how=how))
    meta.add_event(state, now, "lookup", "not sent earlier; sending again")
    state.pop(UNKNOWN, None)
    return None


def _landed(ctx: Context, mailbox: str, message_id: str, since: float, draft_id: object) -> bool:
    from mssendmail.graph.sentitems import LookupDenied

    finder = ctx.transport.sent_items()  # type: ignore[attr-defined]
    try:
        if isinstance(draft_id, str) and draft_id:
            if not finder.draft_exists(mailbox, draft_id):
                return True
            finder.delete_draft(mailbox, draft_id)  # not sent: a fresh draft next
            return False
        return bool(finder.find(mailbox, message_id, since))
    except LookupDenied as exc:
        _remember_denied(ctx, mailbox, exc)
        raise
    finally:
        _forget_denied(ctx, mailbox)


def _lookup_failed(
    ctx: Context, held: Claim, state: dict[str, Any], exc: DeliveryError, mailbox: str
) -> str | None:
    from mssendmail.graph.sentitems import LookupDenied

    now = ctx.now()
    if isinstance(exc, LookupDenied):
        state.pop(UNKNOWN, None)
        meta.add_event(state, now, "lookup", "no permission to look; sending again")
        return None
    unknown = state[UNKNOWN]
    lookups = int(unknown.get("lookups", 0)) + 1
    unknown["lookups"] = lookups
    started = _number(unknown.get("since"), now)
    if now - started >= ctx.policy.max_age:
        state.pop(UNKNOWN, None)
        return None  # the normal path decides, with MAX_AGE
    log.warning(kv(id=held.queue_id, event="lookup-failed", mailbox=mailbox, error=str(exc)))
    meta.add_event(state, now, "lookup-failed", str(exc)[:300])
    p = ctx.policy
    wait = backoff(lookups, p.retry_min, p.retry_max, exc.retry_after, ctx.rng)
    outcome.defer(ctx.spool, held, state, now + wait)
    return "deferred"


def _remember_denied(ctx: Context, mailbox: str, exc: DeliveryError) -> None:
    now = ctx.now()
    with _lock:
        first = _denied.get(mailbox.lower(), 0.0) == 0.0
        _denied[mailbox.lower()] = now + DENIED_RECHECK
    if first:
        log.warning(
            kv(
                event="lookup-denied",
                mailbox=mailbox,
                error=str(exc)[:200],
                hint="grant Mail.ReadBasic.All so retries cannot send duplicates",
            )
        )
    doc = {"time": now, "mailbox": mailbox, "error": str(exc)[:300]}
    try:
        statefiles.write_denied(ctx.spool, doc)
    except OSError:
        pass  # only advice for `check`


def _forget_denied(ctx: Context, mailbox: str) -> None:
    with _lock:
        if _denied.get(mailbox.lower(), 0.0) > ctx.now():
            return
        _denied.pop(mailbox.lower(), None)
    statefiles.forget_denied(ctx.spool, mailbox)


def _number(value: object, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _info(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("id", "message_id", "mailbox", "rcpts", "size")}
