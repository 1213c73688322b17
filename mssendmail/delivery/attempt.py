"""One delivery attempt for one message, from claim to outcome.

Called from the worker's threads. Every path ends in exactly one outcome
function (sent, defer, bury, put_back) or leaves the claim to the caller's
release, so a message is never left locked. Time and randomness come in
through the Context, so tests control the clock.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mssendmail.config import Config
from mssendmail.delivery import cleanup, idempotency, outcome, poison, protection
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

log = logging.getLogger("mssendmail.delivery.attempt")

PER_MAILBOX_LIMIT = 4  # Graph's MailboxConcurrency
SLOT_POLL = 0.05


class Outcome(enum.Enum):
    SENT = "sent"
    DEFERRED = "deferred"
    DEAD = "dead"
    PAUSED = "paused"
    SKIPPED = "skipped"


@dataclass
class Policy:
    retry_min: float
    retry_max: float
    max_age: float
    max_attempts: int | None

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        return cls(
            retry_min=cfg.seconds("RETRY_MIN"),
            retry_max=cfg.seconds("RETRY_MAX"),
            max_age=cfg.seconds("MAX_AGE"),
            max_attempts=cfg.optional_int("MAX_ATTEMPTS"),
        )


class MailboxGate:
    """Per-mailbox throttle pauses and in-flight limits.

    The limit holds across processes (the service plus an admin's --once):
    a send first takes one of PER_MAILBOX_LIMIT flocked slot files for its
    mailbox in state/. The files are opened once per process and locked
    with fcntl directly: filelock's per-acquire bookkeeping cost the drain
    benchmark ~1.4 ms of CPU per message. Without a lock directory (unit
    tests) the in-process semaphore alone does the job.
    """

    def __init__(self, lock_dir: str | None = None, in_flight: int | None = None) -> None:
        self.lock_dir = lock_dir
        # CONCURRENCY caps requests in flight; the worker runs a few more
        # threads so claim/verify/prepare overlap with the network.
        self._in_flight = threading.BoundedSemaphore(in_flight) if in_flight else None
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._fds: dict[tuple[str, int], int] = {}
        self._taken: set[tuple[str, int]] = set()

    def paused_until(self, mailbox: str) -> float:
        with self._lock:
            return self._until.get(mailbox.lower(), 0.0)

    def pause(self, mailbox: str, until: float) -> None:
        with self._lock:
            key = mailbox.lower()
            self._until[key] = max(until, self._until.get(key, 0.0))

    @contextmanager
    def slot(self, mailbox: str) -> Iterator[None]:
        with self._lock:
            sem = self._slots.setdefault(
                mailbox.lower(), threading.BoundedSemaphore(PER_MAILBOX_LIMIT)
            )
        with sem:
            taken = self._take_file_slot(mailbox) if self.lock_dir is not None else None
            try:
                if self._in_flight is None:
                    yield
                else:
                    with self._in_flight:
                        yield
            finally:
                if taken is not None:
                    with self._lock:
                        fcntl.flock(self._fds[taken], fcntl.LOCK_UN)
                        self._taken.discard(taken)

    def _take_file_slot(self, mailbox: str) -> tuple[str, int]:
        key = hashlib.sha256(mailbox.lower().encode()).hexdigest()[:16]
        while True:
            with self._lock:
                for n in range(PER_MAILBOX_LIMIT):
                    slot = (key, n)
                    if slot in self._taken:
                        continue  # one of our own threads has it
                    fd = self._fds.get(slot)
                    if fd is None:
                        path = os.path.join(self.lock_dir or "", f"slot-{key}-{n}.lock")
                        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                        fd = self._fds[slot] = os.open(path, flags, 0o660)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another process has it
                    self._taken.add(slot)
                    return slot
            time.sleep(SLOT_POLL)  # all four taken by other processes


@dataclass
class Context:
    spool: Spool
    cfg: Config
    transport: Transport
    policy: Policy
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


def _attempt(ctx: Context, held: Claim) -> Outcome:
    spool, qid = ctx.spool, held.queue_id
    if outcome.already_sent(spool, qid):
        outcome.sent(spool, held, meta.read_json(spool.sent_path(qid)))
        return Outcome.SENT
    if pause.queue_paused_until(spool) > ctx.now():
        outcome.put_back(spool, held)
        return Outcome.PAUSED
    state = meta.read(spool, qid)
    with open(spool.path(held.area, qid), "rb") as fh:
        try:
            envelope, message_len = record.verify(fh)
        except record.CorruptRecord as exc:
            return _bury(ctx, held, state, {}, PermanentFailure(f"queue file damaged: {exc}"))
        message = record.read_message(fh, message_len)
    try:
        from mssendmail.delivery.prepare import prepare

        prepared = prepare(message, envelope, ctx.cfg, qid)
    except ConfigError as exc:
        return _pause_queue(ctx, held, ConfigurationFailure(str(exc)))
    except (PermanentFailure, ValueError) as exc:
        return _bury(ctx, held, state, envelope, _as_permanent(exc), message)
    info = {
        "id": qid,
        "message_id": prepared.message_id,
        "mailbox": prepared.mailbox,
        "rcpts": len(prepared.recipients),
        "size": len(prepared.mime),
    }
    if prepared.mime_fixed or prepared.mime_kept:
        info["mime_fixed"] = ",".join(prepared.mime_fixed) or None
        info["mime_kept"] = prepared.mime_kept or None
    for warning in prepared.warnings:
        log.warning(kv(id=qid, warning=warning))
    if not prepared.recipients:
        # Every recipient was aliased away (e.g. "nobody: /dev/null"): like
        # Postfix, that is a delivery to nowhere, not an error.
        log.info(kv(**info, outcome="discarded", reason="no recipients after aliases"))
        outcome.sent(spool, held, {**info, "sent": ctx.now(), "discarded": True})
        return Outcome.SENT
    paused = ctx.gate.paused_until(prepared.mailbox)
    if paused > ctx.now():
        outcome.defer(spool, held, None, paused)
        return Outcome.DEFERRED
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
            delivered = ctx.transport.send(prepared.mailbox, prepared.mime, qid)
    except DeliveryError as exc:
        protection.after_failure(ctx, prepared.mailbox, len(prepared.recipients), exc)
        ms = int((time.monotonic() - started) * 1000)
        log.info(
            kv(
                **info,
                attempt=attempt,
                outcome=_kind(exc),
                status=exc.status,
                code=exc.code,
                request_id=exc.request_id,
                ms=ms,
            )
        )
        return _failed(ctx, held, state, envelope, message, prepared.mailbox, exc, sent_at)
    ms = int((time.monotonic() - started) * 1000)
    log.info(
        kv(
            **info,
            attempt=attempt,
            outcome="sent",
            status=delivered.status,
            code=None,
            request_id=delivered.request_id,
            ms=ms,
        )
    )
    record_info.update(sent=ctx.now(), attempts=attempt, request_id=delivered.request_id)
    try:
        outcome.sent(spool, held, record_info)
    except OSError as exc:
        # Sent, but not recorded (disk full?): it must not go out again.
        log.error(kv(event="sent-unrecorded", id=qid, error=exc.strerror or str(exc)))
        outcome.sent_unrecorded(spool, held)
        return Outcome.SENT
    ctx.mime_fixes.add(prepared.mime_fixed)
    pause.clear_queue_pause(spool)
    cleanup.schedule(ctx, qid, prepared.mailbox, prepared.message_id, sent_at)
    return Outcome.SENT


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
    until = pause.pause_queue(
        ctx.spool, ctx.now(), _describe(exc), ctx.policy.retry_min, ctx.policy.retry_max
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


__all__ = ["Context", "MailboxGate", "Outcome", "Policy", "TemporaryFailure", "deliver"]
