"""SENT_ITEMS=delete: remove the Sent Items copy of each message once it is there.

Job: a MIME sendMail always keeps a copy in the sending mailbox's Sent
Items (saveToSentItems exists for JSON messages only). With SENT_ITEMS=delete
the worker writes, after the 202, a durable clean-up job
``state/cleanup-<id>.json`` (mailbox, Message-ID, when the send began).
Jobs are worked through in the background: look the copy up by Message-ID
(mssendmail.graph.sentitems), delete every copy sent at or after the send
began (a duplicate is ours too), remove the job. The copy may appear late:
a job that finds nothing is tried again with a growing delay, and after
GIVE_UP it is dropped with one log line. Jobs survive restarts; a --once
run works through the due ones before it exits.

It never deletes anything but what it sent: only items in Sent Items whose
internetMessageId is exactly the message's and whose sentDateTime is not
before the send began (less clock skew), and only by the ids Graph returned.

Deletion: ``POST /messages/{id}/permanentDelete`` in the global cloud (the
item goes to the mailbox's Purges folder, out of reach of Outlook; Microsoft
documents the API for the global service only), ``DELETE /messages/{id}``
elsewhere (the item moves to Deleted Items). Both need Mail.ReadWrite.

A job written is one fsynced file; the window that remains: a kill -9
between the 202 and the job file keeps that copy (never loses mail).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mssendmail.errors import DeliveryError
from mssendmail.logs import kv
from mssendmail.spool import statefiles

if TYPE_CHECKING:
    from mssendmail.delivery.attempt import Context

log = logging.getLogger("mssendmail.delivery.cleanup")

GIVE_UP = 6 * 3600.0  # a copy not seen by then is not coming
FIRST_TRY = 30.0  # copies usually appear within seconds
MAX_WAIT = 1800.0
BATCH = 20  # jobs per round: bounded work between dispatch rounds


def enabled(ctx: Context) -> bool:
    value = ctx.cfg.get("SENT_ITEMS").lower()
    if value not in ("keep", "delete"):
        from mssendmail.errors import ConfigError

        raise ConfigError(f"SENT_ITEMS={value!r} is not keep or delete")
    return value == "delete" and getattr(ctx.transport, "sent_items", None) is not None


def schedule(ctx: Context, queue_id: str, mailbox: str, message_id: str, since: float) -> None:
    """Record the clean-up job of a message Graph accepted (best effort on a full disk)."""
    if not enabled(ctx):
        return
    now = ctx.now()
    job = {
        "id": queue_id,
        "mailbox": mailbox,
        "message_id": message_id,
        "since": since,
        "created": now,
        "next": now + _first(ctx),
        "tries": 0,
    }
    try:
        statefiles.write_cleanup_job(ctx.spool, queue_id, job)
    except OSError as exc:
        log.warning(kv(id=queue_id, event="cleanup-not-scheduled", error=exc.strerror or str(exc)))


def _first(ctx: Context) -> float:
    """The first look: FIRST_TRY, or sooner when SENT_ITEMS_DELAY says copies come sooner."""
    return max(1.0, min(FIRST_TRY, ctx.cfg.seconds("SENT_ITEMS_DELAY")))


def pending(ctx: Context) -> list[str]:
    return statefiles.cleanup_jobs(ctx.spool)


def run_due(ctx: Context) -> int:
    """Work through up to BATCH due jobs; how many were finished (deleted or given up)."""
    if ctx.cfg.get("SENT_ITEMS").lower() != "delete":
        return 0
    finished = 0
    tried = 0
    for qid in pending(ctx):
        if tried >= BATCH:
            break
        job = statefiles.read_cleanup_job(ctx.spool, qid)
        if not _valid(job, qid):
            statefiles.remove_cleanup_job(ctx.spool, qid)
            continue
        if float(job["next"]) > ctx.now():
            continue
        tried += 1
        finished += _run_one(ctx, qid, job)  # True counts 1
    return finished


def _valid(job: dict[str, Any], qid: str) -> bool:
    return (
        job.get("id") == qid
        and isinstance(job.get("mailbox"), str)
        and isinstance(job.get("message_id"), str)
        and all(isinstance(job.get(k), (int, float)) for k in ("since", "created", "next", "tries"))
    )


def _run_one(ctx: Context, qid: str, job: dict[str, Any]) -> bool:
    from mssendmail.graph.sentitems import LookupDenied

    mailbox, message_id = job["mailbox"], job["message_id"]
    permanent = ctx.cfg.get("CLOUD").lower() in ("", "global")
    finder = ctx.transport.sent_items(permanent)  # type: ignore[attr-defined]
    now = ctx.now()
    try:
        with ctx.gate.slot(mailbox):
            ids = finder.find(mailbox, message_id, float(job["since"]))
            done = [finder.delete(mailbox, item) for item in ids]
    except LookupDenied as exc:
        return _give_up(ctx, qid, job, f"Graph refused it (needs Mail.ReadWrite): {exc}")
    except DeliveryError as exc:
        log.info(kv(id=qid, event="cleanup-retry", mailbox=mailbox, error=str(exc)[:200]))
        ids, done = [], []
    if ids:
        log.info(
            kv(id=qid, event="sent-items-deleted", mailbox=mailbox, copies=len(ids), how=done[0])
        )
        statefiles.remove_cleanup_job(ctx.spool, qid)
        return True
    if now - float(job["created"]) >= GIVE_UP:
        return _give_up(ctx, qid, job, "the Sent Items copy never appeared")
    tries = int(job["tries"]) + 1
    job.update(tries=tries, next=now + min(MAX_WAIT, _first(ctx) * 2.0**tries))
    try:
        statefiles.write_cleanup_job(ctx.spool, qid, job)
    except OSError:
        pass  # the old job stays due: tried again next round
    return False


def _give_up(ctx: Context, qid: str, job: dict[str, Any], why: str) -> bool:
    log.warning(
        kv(
            id=qid,
            event="sent-items-cleanup-gave-up",
            mailbox=job["mailbox"],
            message_id=job["message_id"],
            why=why[:200],
        )
    )
    statefiles.remove_cleanup_job(ctx.spool, qid)
    return True
