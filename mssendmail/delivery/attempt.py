"""One delivery attempt for one message, from claim to outcome.

Called from the worker's threads. Every path ends in exactly one outcome
function (sent, defer, bury, put_back) or leaves the claim to the caller's
release, so a message is never left locked. Time and randomness come in
through the Context, so tests control the clock.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mssendmail.config import Config
from mssendmail.delivery import cleanup, idempotency, outcome, poison, protection
from mssendmail.delivery.gate import PER_MAILBOX_LIMIT, MailboxGate
from mssendmail.delivery.mime import FixCounts
from mssendmail.delivery.retry import backoff
from mssendmail.errors import (
    ConfigError,
    ConfigurationFailure,
    DeliveryError,
    PermanentFailure,
    SlowDown,
    TemporaryFailure,
    Throttled,
)
from mssendmail.logs import kv
from mssendmail.spool import meta, pause, record
from mssendmail.spool.claim import Claim, claim
from mssendmail.spool.layout import ACTIVE, Spool
from mssendmail.transport import Transport

if TYPE_CHECKING:  # prepare is imported when the first message is prepared
    from mssendmail.delivery.prepare import Prepared

log = logging.getLogger("mssendmail.delivery.attempt")


class Outcome(enum.Enum):
    SENT = "sent"
    DEFERRED = "deferred"
    DEAD = "dead"
    PAUSED = "paused"
    SKIPPED = "skipped"


@dataclass
class RetryPolicy:
    """When to retry and when to give up (RETRY_MIN/MAX, MAX_AGE, MAX_ATTEMPTS).

    Not to be confused with prepare.SenderPolicy, the address rules.
    """

    retry_min: float
    retry_max: float
    max_age: float
    max_attempts: int | None

    @classmethod
    def from_config(cls, cfg: Config) -> RetryPolicy:
        return cls(
            retry_min=cfg.seconds("RETRY_MIN"),
            retry_max=cfg.seconds("RETRY_MAX"),
            max_age=cfg.seconds("MAX_AGE"),
            max_attempts=cfg.optional_int("MAX_ATTEMPTS"),
        )


@dataclass
class Context:
    spool: Spool
    cfg: Config
    transport: Transport
    policy: RetryPolicy
    gate: MailboxGate = field(default_factory=MailboxGate)
    now: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    notify: Callable[[bytes, dict[str, Any], str, dict[str, Any]], None] | None = None
    mime_fixes: FixCounts = field(default_factory=FixCounts)


def deliver(ctx: Context, queue_id: str, area: str) -> Outcome:
    """Claim one message and try to send it once."""
    held = claim(ctx.spool, queue_id, area)
    if held is None:
        return Outcome.SKIPPED
    try:
        return _attempt(ctx, held)
    except Exception as exc:
        if held.fd >= 0 and held.area == ACTIVE and not poison.is_global(exc):
            # A bug this message triggers: counted against it, never a stall.
            try:
                done = poison.crashed(ctx.spool, held, exc, ctx.now(), ctx.policy.retry_max)
            except OSError:
                _put_back_quietly(ctx, held)  # cannot even record it: the disk, a stall
                raise
            return Outcome.DEAD if done == "dead" else Outcome.DEFERRED
        _put_back_quietly(ctx, held)
        raise
    except BaseException:
        _put_back_quietly(ctx, held)
        raise
    finally:
        held.release()


def _put_back_quietly(ctx: Context, held: Claim) -> None:
    # A disk error or a signal mid-attempt: do not leave the message in
    # active/ until the next restart's recovery.
    if held.fd >= 0:
        try:
            outcome.put_back(ctx.spool, held)
        except OSError:
            pass  # recover() at the next start puts it back


class Verdict(enum.Enum):
    """What _classify found out about a claimed message, before anything is done."""

    ALREADY_SENT = "already-sent"  # a sent record exists: a crash after the 202
    QUEUE_PAUSED = "queue-paused"  # a configuration failure paused every send
    DAMAGED = "damaged"  # the record fails its checksum
    CONFIG = "config"  # prepare() found the configuration unusable
    UNSENDABLE = "unsendable"  # prepare() refused this message for good
    NO_RECIPIENTS = "no-recipients"  # every recipient was aliased away
    MAILBOX_PAUSED = "mailbox-paused"  # Graph throttled the mailbox
    SEND = "send"


@dataclass
class Job:
    """One claimed message and what classification read about it."""

    ctx: Context
    held: Claim
    state: dict[str, Any] = field(default_factory=dict)
    envelope: dict[str, Any] = field(default_factory=dict)
    message: bytes | None = None
    prepared: Prepared | None = None
    error: Exception | None = None
    paused_until: float = 0.0

    @property
    def ready(self) -> Prepared:
        assert self.prepared is not None  # every verdict after CONFIG/UNSENDABLE has one
        return self.prepared

    def info(self) -> dict[str, Any]:
        """The fields every log line and the sent record of this attempt carry."""
        prepared = self.ready
        info: dict[str, Any] = {
            "id": self.held.queue_id,
            "message_id": prepared.message_id,
            "mailbox": prepared.mailbox,
            "rcpts": len(prepared.recipients),
            "size": len(prepared.mime),
        }
        if prepared.mime_fixed or prepared.mime_kept:
            info["mime_fixed"] = ",".join(prepared.mime_fixed) or None
            info["mime_kept"] = prepared.mime_kept or None
        return info


def _attempt(ctx: Context, held: Claim) -> Outcome:
    """Classify the message first, then act on the verdict (ACTIONS)."""
    verdict, job = _classify(ctx, held)
    return ACTIONS[verdict](job)


def _classify(ctx: Context, held: Claim) -> tuple[Verdict, Job]:
    spool, qid = ctx.spool, held.queue_id
    job = Job(ctx, held)
    if outcome.already_sent(spool, qid):
        return Verdict.ALREADY_SENT, job
    if pause.queue_paused_until(spool) > ctx.now():
        return Verdict.QUEUE_PAUSED, job
    job.state = meta.read(spool, qid)
    with open(spool.path(held.area, qid), "rb") as fh:
        try:
            job.envelope, message_len = record.verify(fh)
        except record.CorruptRecord as exc:
            job.error = exc
            return Verdict.DAMAGED, job
        job.message = record.read_message(fh, message_len)
    try:
        from mssendmail.delivery.prepare import prepare

        job.prepared = prepare(job.message, job.envelope, ctx.cfg, qid)
    except ConfigError as exc:
        job.error = exc
        return Verdict.CONFIG, job
    except (PermanentFailure, ValueError) as exc:
        job.error = exc
        return Verdict.UNSENDABLE, job
    for warning in job.prepared.warnings:
        log.warning(kv(id=qid, warning=warning))
    if not job.prepared.recipients:
        return Verdict.NO_RECIPIENTS, job
    job.paused_until = ctx.gate.paused_until(job.prepared.mailbox)
    if job.paused_until > ctx.now():
        return Verdict.MAILBOX_PAUSED, job
    return Verdict.SEND, job


def _act_already_sent(job: Job) -> Outcome:
    spool, qid = job.ctx.spool, job.held.queue_id
    outcome.sent(spool, job.held, meta.read_json(spool.sent_path(qid)))
    return Outcome.SENT


def _act_queue_paused(job: Job) -> Outcome:
    outcome.put_back(job.ctx.spool, job.held)
    return Outcome.PAUSED


def _act_damaged(job: Job) -> Outcome:
    damage = PermanentFailure(f"queue file damaged: {job.error}")
    return _bury(job.ctx, job.held, job.state, {}, damage)


def _act_config(job: Job) -> Outcome:
    return _pause_queue(job.ctx, job.held, ConfigurationFailure(str(job.error)))


def _act_unsendable(job: Job) -> Outcome:
    assert job.error is not None
    failure = _as_permanent(job.error)
    return _bury(job.ctx, job.held, job.state, job.envelope, failure, job.message)


def _act_no_recipients(job: Job) -> Outcome:
    # Every recipient was aliased away (e.g. "nobody: /dev/null"): like
    # Postfix, that is a delivery to nowhere, not an error.
    info = job.info()
    log.info(kv(**info, outcome="discarded", reason="no recipients after aliases"))
    outcome.sent(job.ctx.spool, job.held, {**info, "sent": job.ctx.now(), "discarded": True})
    return Outcome.SENT


def _act_mailbox_paused(job: Job) -> Outcome:
    outcome.defer(job.ctx.spool, job.held, None, job.paused_until)
    return Outcome.DEFERRED


def _act_send(job: Job) -> Outcome:
    ctx, held, prepared, state, envelope = job.ctx, job.held, job.ready, job.state, job.envelope
    info = job.info()
    record_info = {
        **info,
        "attempts": meta.attempts(state),
        "sender": envelope.get("sender", ""),
        "recipients": prepared.recipients,
        "uid": envelope.get("uid"),
        "submitted": envelope.get("time"),
    }
    handled = idempotency.before_send(ctx, held, state, prepared, record_info)
    if handled is None:
        handled = protection.before_send(
            ctx, held, state, prepared.mailbox, len(prepared.recipients)
        )
    if handled is not None:
        return Outcome(handled)
    attempt = meta.attempts(state) + 1
    sent_at = ctx.now()
    started = time.monotonic()
    try:
        with ctx.gate.slot(prepared.mailbox):
            delivered = ctx.transport.send(prepared.mailbox, prepared.mime, held.queue_id)
    except DeliveryError as exc:
        protection.after_failure(ctx, prepared.mailbox, len(prepared.recipients), exc)
        _log_attempt(info, attempt, _kind(exc), exc.status, exc.code, exc.request_id, started)
        assert job.message is not None  # read before prepare()
        return _failed(ctx, held, state, envelope, job.message, prepared.mailbox, exc, sent_at)
    except Exception:
        idempotency.note_crash(ctx, held.queue_id, state, sent_at)  # a bug; it may have gone
        raise  # deliver() counts it as a crash of this message (poison.py)
    try:
        _log_attempt(info, attempt, "sent", delivered.status, None, delivered.request_id, started)
        record_info.update(sent=ctx.now(), attempts=attempt, request_id=delivered.request_id)
        return _record_sent(ctx, held, prepared, record_info, sent_at)
    except OSError:
        raise  # the disk: _record_sent's own paths and the worker's stall handle it
    except Exception:
        # Graph took it (202) and a bug stopped the record: the crash's retry
        # must find it in Sent Items, not send it again.
        idempotency.note_crash(
            ctx, held.queue_id, state, sent_at, "accepted, then recording raised"
        )
        raise


def _log_attempt(
    info: dict[str, Any],
    attempt: int,
    result: str,
    status: int | None,
    code: str | None,
    request_id: str | None,
    started: float,
) -> None:
    ms = int((time.monotonic() - started) * 1000)
    log.info(
        kv(
            **info,
            attempt=attempt,
            outcome=result,
            status=status,
            code=code,
            request_id=request_id,
            ms=ms,
        )
    )


def _record_sent(
    ctx: Context,
    held: Claim,
    prepared: Prepared,
    record_info: dict[str, Any],
    sent_at: float,
) -> Outcome:
    try:
        outcome.sent(ctx.spool, held, record_info)
    except OSError as exc:
        # Sent, but not recorded (disk full?): it must not go out again.
        log.error(kv(event="sent-unrecorded", id=held.queue_id, error=exc.strerror or str(exc)))
        outcome.sent_unrecorded(ctx.spool, held)
        return Outcome.SENT
    ctx.mime_fixes.add(prepared.mime_fixed)
    pause.clear_queue_pause(ctx.spool)
    cleanup.schedule(ctx, held.queue_id, prepared.mailbox, prepared.message_id, sent_at)
    return Outcome.SENT


# What each verdict does: every entry ends in one outcome function or a put-back.
ACTIONS: dict[Verdict, Callable[[Job], Outcome]] = {
    Verdict.ALREADY_SENT: _act_already_sent,
    Verdict.QUEUE_PAUSED: _act_queue_paused,
    Verdict.DAMAGED: _act_damaged,
    Verdict.CONFIG: _act_config,
    Verdict.UNSENDABLE: _act_unsendable,
    Verdict.NO_RECIPIENTS: _act_no_recipients,
    Verdict.MAILBOX_PAUSED: _act_mailbox_paused,
    Verdict.SEND: _act_send,
}


def _kind(exc: DeliveryError) -> str:
    for cls, name in (
        (ConfigurationFailure, "config"),
        (PermanentFailure, "permanent"),
        (Throttled, "throttled"),
        (SlowDown, "slowdown"),
    ):
        if isinstance(exc, cls):
            return name
    return "temporary"


def _as_permanent(exc: Exception) -> PermanentFailure:
    if isinstance(exc, PermanentFailure):
        return exc
    return PermanentFailure(f"message cannot be prepared: {exc}")


def _failed(
    ctx: Context,
    held: Claim,
    state: dict[str, Any],
    envelope: dict[str, Any],
    message: bytes,
    mailbox: str,
    exc: DeliveryError,
    sent_at: float,
) -> Outcome:
    if isinstance(exc, ConfigurationFailure):
        return _pause_queue(ctx, held, exc)
    attempts = meta.attempts(state) + 1
    state["attempts"] = attempts
    if isinstance(exc, PermanentFailure):
        return _bury(ctx, held, state, envelope, exc, message)
    now = ctx.now()
    state["last_error"] = _error_record(exc, now)
    meta.add_event(state, now, "deferred", _describe(exc))
    # Requeued or released mail starts a fresh lifetime (Postfix postsuper -r).
    started = state.get("requeued") or envelope.get("queued") or envelope.get("time") or now
    age = now - float(started)
    limit = ctx.policy.max_attempts
    if age >= ctx.policy.max_age or (limit is not None and attempts >= limit):
        why = "too old" if age >= ctx.policy.max_age else "too many attempts"
        return _bury(ctx, held, state, envelope, exc, message, why)
    p = ctx.policy
    if isinstance(exc, Throttled) and exc.retry_after:
        ctx.gate.pause(mailbox, now + exc.retry_after)
    if isinstance(exc, SlowDown):
        delay = max(p.retry_max, exc.retry_after or 0.0)
    else:
        delay = backoff(attempts, p.retry_min, p.retry_max, exc.retry_after, ctx.rng)
    idempotency.note_failure(ctx, state, exc, sent_at)
    state["next_attempt"] = now + delay
    outcome.defer(ctx.spool, held, state, now + delay)
    return Outcome.DEFERRED


def _pause_queue(ctx: Context, held: Claim, exc: DeliveryError) -> Outcome:
    from mssendmail.graph import fingerprint

    until = pause.pause_queue(
        ctx.spool,
        ctx.now(),
        _describe(exc),
        ctx.policy.retry_min,
        ctx.policy.retry_max,
        fingerprint.of(ctx.cfg),
    )
    log.error(
        kv(
            event="queue-paused",
            until=int(until),
            code=exc.code,
            status=exc.status,
            reason=str(exc),
        )
    )
    outcome.put_back(ctx.spool, held)
    return Outcome.PAUSED


def _bury(
    ctx: Context,
    held: Claim,
    state: dict[str, Any],
    envelope: dict[str, Any],
    exc: DeliveryError,
    message: bytes | None = None,
    why: str = "",
) -> Outcome:
    now = ctx.now()
    reason = _error_record(exc, now)
    reason["attempts"] = meta.attempts(state)
    reason["why"] = why or "permanent failure"
    state["last_error"] = reason
    meta.add_event(state, now, "dead", _describe(exc))
    outcome.bury(ctx.spool, held, state, reason)
    log.warning(
        kv(
            event="dead-letter",
            id=held.queue_id,
            why=reason["why"],
            code=exc.code,
            status=exc.status,
            reason=str(exc),
        )
    )
    if ctx.notify is not None and message is not None:
        try:
            ctx.notify(message, envelope, held.queue_id, reason)
        except Exception as err:  # a failed notice must not undo the dead-letter
            log.error(kv(event="notice-failed", id=held.queue_id, error=str(err)))
    return Outcome.DEAD


def _error_record(exc: DeliveryError, now: float) -> dict[str, Any]:
    return {
        "time": now,
        "class": _kind(exc),
        "status": exc.status,
        "code": exc.code,
        "message": str(exc),
        "request_id": exc.request_id,
    }


def _describe(exc: DeliveryError) -> str:
    bits = [str(exc)]
    if exc.status:
        bits.append(f"status {exc.status}")
    if exc.code:
        bits.append(exc.code)
    return "; ".join(bits)


__all__ = [
    "PER_MAILBOX_LIMIT",
    "Context",
    "MailboxGate",
    "Outcome",
    "RetryPolicy",
    "TemporaryFailure",
    "deliver",
]
