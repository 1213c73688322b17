"""Admin transitions: retry, requeue, hold, release and delete.

Every transition first takes the same flock the worker takes (claim.lock) on
the message where it is, and only then moves, touches or deletes it. So an
admin command and a running worker never act on one message at once: if the
worker holds it, the command walks away ("being sent right now"); if the
command holds it, the worker's claim fails and it tries again later. Moves
are spool.move() (rename + directory fsyncs), so a crash leaves the message
in exactly one state.

Each function returns a one-line report per message; a message that cannot
be handled raises (NoSuchMessage: 67, Busy: 75, WrongState: 65).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mssendmail.errors import DataError, MssendmailError, NoSuchMessage, SpoolError
from mssendmail.spool import meta, status
from mssendmail.spool.claim import Claim, lock
from mssendmail.spool.layout import (
    ACTIVE,
    DEAD,
    DEFERRED,
    HOLD,
    MAILDROP,
    QUEUE,
    Spool,
    is_id,
    service_ids,
)

LOCK_TRIES = 5


class Busy(SpoolError):
    """The worker holds the message (it is being sent); try again in a moment."""


class WrongState(DataError):
    """The message is not in a state this command applies to."""


@dataclass
class Result:
    queue_id: str
    text: str


def _no_such(queue_id: str) -> NoSuchMessage:
    return NoSuchMessage(f"no such message: {queue_id}; see 'mssendmail-queue list --state all'")


def take(spool: Spool, queue_id: str, allowed: Iterable[str]) -> Claim:
    """Lock a message where it is, if it is in one of the allowed areas.

    Retries a few times because a message may move between locate() and
    lock() (the worker deferring it, pickup queueing it).
    """
    allowed = tuple(allowed)
    if not is_id(queue_id):
        raise _no_such(queue_id)
    area = None
    for _ in range(LOCK_TRIES):
        area = spool.locate(queue_id)
        if area == MAILDROP and MAILDROP not in allowed:
            # Pickup may be a minute away (timer) or never come (worker
            # stopped): do that one message's pickup step now, then act.
            pick_up_one(spool, queue_id)
            area = spool.locate(queue_id)
            if area is None:
                raise WrongState(
                    f"message {queue_id} was not a valid submission and went to corrupt/; "
                    "see the reason record there"
                )
            if area == MAILDROP:
                raise Busy(
                    f"message {queue_id} is still in maildrop/, locked by its submitter or "
                    "by a worker picking it up; try again in a moment (delete works now)"
                )
        if area is None:
            if status.is_sent(spool, queue_id):
                break
            # locate() looks in one directory after another, so a message the
            # worker renames between two of them (deferred/ -> active/) can
            # look absent for a moment: look again before saying "no such".
            time.sleep(0.02)
            continue
        if area not in allowed:
            raise _wrong_state(spool, queue_id, area, allowed)
        held = lock(spool, queue_id, area)
        if held is not None:
            return held
        time.sleep(0.05)
    raise _not_taken(spool, queue_id, area)


def _not_taken(spool: Spool, queue_id: str, area: str | None) -> MssendmailError:
    """Why take() gave up, after its tries, on a message last seen in `area`."""
    if area is None:
        if status.is_sent(spool, queue_id):
            return WrongState(f"message {queue_id} was already sent; nothing to do")
        return _no_such(queue_id)
    if area == ACTIVE:
        return Busy(f"message {queue_id} is being sent right now; try again in a moment")
    return Busy(f"message {queue_id} is busy (the worker holds it); try again in a moment")


def pick_up_one(spool: Spool, queue_id: str) -> None:
    """The worker's pickup step for one maildrop/ entry (same checks, same copy).

    The copy must stay usable by the worker, which rewrites a sent message
    in place: run by root it is given to the service user; run by a group
    member it is made group-writable.
    """
    from mssendmail import config
    from mssendmail.delivery.pickup import pickup

    try:
        max_size = config.load().max_message_size
    except MssendmailError:
        max_size = config.MAX_MESSAGE_SIZE_CAP
    for picked in pickup(spool, max_size, names=[queue_id]):
        path = spool.path(QUEUE, picked)
        owner = service_ids() if os.geteuid() == 0 else None
        try:
            if owner is not None:
                os.chown(path, *owner, follow_symlinks=False)
            else:
                os.chmod(path, 0o660)
        except FileNotFoundError:
            continue  # a running worker claimed it already


def _wrong_state(
    spool: Spool, queue_id: str, area: str, allowed: tuple[str, ...]
) -> MssendmailError:
    if area == ACTIVE:
        probe = lock(spool, queue_id, area)
        if probe is None:
            return Busy(f"message {queue_id} is being sent right now; try again in a moment")
        probe.release()
    where = "queued" if area in (QUEUE, MAILDROP) else area
    names = ", ".join("queued" if a in (QUEUE, MAILDROP) else a for a in dict.fromkeys(allowed))
    return WrongState(f"message {queue_id} is {where}; this works only for {names} messages")


def _event(spool: Spool, queue_id: str, event: str, detail: str, now: float) -> None:
    state = meta.read(spool, queue_id)
    meta.add_event(state, now, event, detail)
    meta.write(spool, queue_id, state)


def _transition(
    spool: Spool, queue_id: str, allowed: Iterable[str], act: Callable[[Claim], str]
) -> Result:
    """Take the message, act on it, release it: the shape every transition shares.

    `act` returns the report ("due now"); the claim is released whatever it does.
    """
    held = take(spool, queue_id, allowed)
    try:
        text = act(held)
    finally:
        held.release()
    return Result(queue_id, f"{queue_id}: {text}")


def retry(spool: Spool, queue_id: str, now: float | None = None) -> Result:
    """Make a deferred message due now (its deferred/ mtime is the next attempt)."""
    when = time.time() if now is None else now
    if spool.locate(queue_id) in (QUEUE, MAILDROP):
        return Result(queue_id, f"{queue_id}: already due")

    def act(held: Claim) -> str:
        state = meta.read(spool, queue_id)
        state["next_attempt"] = when
        meta.add_event(state, when, "retry", "made due by an admin")
        meta.write(spool, queue_id, state)
        spool.set_due(queue_id, when)
        return "due now"

    return _transition(spool, queue_id, (DEFERRED,), act)


def requeue(spool: Spool, queue_id: str, now: float | None = None) -> Result:
    """Move a dead letter back into the queue with a fresh attempt count."""
    when = time.time() if now is None else now

    def act(held: Claim) -> str:
        state = meta.read(spool, queue_id)
        state["attempts"] = 0
        state.pop("last_error", None)
        state.pop("next_attempt", None)
        # For the worker's MAX_AGE check: the age counts from here, not from submission.
        state["requeued"] = when
        meta.add_event(state, when, "requeued", "by an admin, attempts reset")
        meta.write(spool, queue_id, state)
        spool.release_dead(queue_id)
        held.area = QUEUE
        return "requeued"

    return _transition(spool, queue_id, (DEAD,), act)


def hold(spool: Spool, queue_id: str, now: float | None = None) -> Result:
    """Put a queued, deferred or orphaned active message on hold: never sent, never expires."""
    when = time.time() if now is None else now

    def act(held: Claim) -> str:
        if held.area == HOLD:
            return "already on hold"
        _event(spool, queue_id, "hold", f"held by an admin (was {held.area})", when)
        spool.move(queue_id, held.area, HOLD)
        held.area = HOLD
        return "on hold"

    return _transition(spool, queue_id, (QUEUE, DEFERRED, ACTIVE, HOLD), act)


def release(spool: Spool, queue_id: str, now: float | None = None) -> Result:
    """Return a held message to the queue, due now."""
    when = time.time() if now is None else now

    def act(held: Claim) -> str:
        _event(spool, queue_id, "release", "released by an admin", when)
        spool.move(queue_id, HOLD, QUEUE)
        held.area = QUEUE
        return "released"

    return _transition(spool, queue_id, (HOLD,), act)


DELETABLE = (MAILDROP, QUEUE, DEFERRED, HOLD, DEAD, ACTIVE)


def delete(spool: Spool, queue_id: str) -> Result:
    """Remove a message for good, with its meta and reason records.

    A maildrop/ entry that stays locked is removed all the same: its
    submitter owns it and may hold its flock for ever. A worker copying it
    meanwhile sees the original gone and drops its copy (pickup._commit);
    one that linked its copy first has queued it, and that copy goes too.
    """

    def act(held: Claim) -> str:
        spool.delete(queue_id, held.area)
        # The message is gone; leftovers below would only be orphaned records.
        meta.remove(spool, queue_id)
        if held.area == DEAD:
            spool.drop_reason(DEAD, queue_id)
        return "deleted"

    try:
        return _transition(spool, queue_id, DELETABLE, act)
    except Busy as busy:
        # The original may be there beside a worker's fresh, still locked copy.
        try:
            spool.delete(queue_id, MAILDROP)
        except FileNotFoundError:
            raise busy from None
        _delete_the_copy(spool, queue_id)
        return Result(queue_id, f"{queue_id}: deleted (it was held locked in maildrop/)")


def _delete_the_copy(spool: Spool, queue_id: str) -> None:
    """After a locked original went: delete the copy a worker had queued first, if any.

    Such a copy is locked until its worker has checked that the original
    is still there, so it may look busy for a moment.
    """
    for _ in range(LOCK_TRIES):
        if spool.locate(queue_id) in (None, MAILDROP):
            return
        try:
            delete(spool, queue_id)
            return
        except NoSuchMessage:
            return  # the worker dropped its copy while we looked
        except Busy:
            if spool.locate(queue_id) == ACTIVE:
                raise
    raise Busy(f"message {queue_id} is busy (the worker holds it); try again in a moment")


ACTIONS: dict[str, Callable[[Spool, str], Result]] = {
    "retry": retry,
    "requeue": requeue,
    "hold": hold,
    "release": release,
    "delete": delete,
}
