"""Pickup: move submissions from maildrop/ into the worker's private queue/.

Everything in maildrop/ is hostile: any local user can put anything there and
keep changing it. So each entry is opened without following links, must be a
regular file with one link and a sane size, and is *copied* into queue/
while its checksum is checked; the submitter cannot touch the copy. The copy
gets a new envelope whose uid and user come from the file's owner, not from
the submitter's claim. Garbage goes to corrupt/ with a reason record.

Two workers can run at once: an flock on the maildrop file decides who
ingests it, and the copy is linked (never renamed over) into queue/.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pwd
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mssendmail.delivery.skips import SkipList, Stalled, describe, is_resource_error
from mssendmail.logs import kv
from mssendmail.spool import intake, record
from mssendmail.spool.intake import QueueCopy
from mssendmail.spool.layout import (
    MAILDROP,
    QUEUE,
    TEMP_PREFIX,
    Spool,
    is_id,
    remove_if_abandoned,
)

log = logging.getLogger("mssendmail.delivery.pickup")

ENVELOPE_SLACK = record.MAX_ENVELOPE + record.FOOTER_LEN


class Rejected(Exception):
    """An entry that must be quarantined, with the reason."""


@dataclass
class Staged:
    """A verified copy waiting for the batch commit.

    The original's fd stays open, and with it our flock, until the original
    is gone: an admin's delete must not remove it between our copy and our
    link, or the "deleted" message would be queued and sent anyway.
    """

    name: str
    copy: QueueCopy
    source_fd: int
    uid: int = -1  # the original's owner by fstat: the submitter the worker trusts

    def release(self) -> None:
        """Close both fds and drop the temp copy; safe to call twice."""
        self.copy.discard()
        if self.source_fd >= 0:
            os.close(self.source_fd)
            self.source_fd = -1


def maildrop_names(spool: Spool) -> list[str]:
    """maildrop/ entries, oldest first (ids sort by time)."""
    try:
        return sorted(os.listdir(spool.dir(MAILDROP)))
    except FileNotFoundError:
        return []


def pickup(
    spool: Spool,
    max_size: int,
    now: float | None = None,
    limit: int | None = None,
    names: Iterable[str] | None = None,
    skips: SkipList | None = None,
    owners: dict[str, int] | None = None,
) -> list[str]:
    """Ingest complete submissions (at most `limit`); returns the new ids, oldest first.

    `names` lets a caller with a big backlog list maildrop/ once and hand
    it out in batches, instead of listing it again for every batch. `skips`
    remembers, across calls, entries that can be neither queued nor moved.
    `owners` gets the trusted (fstat) uid of each id queued.

    No error of one entry escapes: it is quarantined, or skipped and
    remembered. Raises Stalled (after queueing what it had copied) when the
    process or the disk runs short of something; nothing is rejected then.
    """
    names = maildrop_names(spool) if names is None else names
    skips = SkipList() if skips is None else skips
    when = time.time() if now is None else now
    staged: list[Staged] = []
    queued: list[str] = []
    try:
        stalled = _stage(spool, names, max_size, when, limit, skips, staged)
        queued = _commit(spool, staged)
        if owners is not None:
            uids = {item.name: item.uid for item in staged}
            owners.update((name, uids[name]) for name in queued)
        if queued:
            # The copies are durable (fsync + link + directory fsync in
            # _commit) before any original goes; a crash in between leaves
            # duplicates that the next round drops (spool.known()).
            intake.drop_originals(spool, queued)
    except OSError as exc:
        raise Stalled(exc, queued) from exc
    finally:
        for item in staged:
            item.release()
    if stalled is not None:
        raise Stalled(stalled, queued)
    return queued


def _stage(
    spool: Spool,
    names: Iterable[str],
    max_size: int,
    now: float,
    limit: int | None,
    skips: SkipList,
    staged: list[Staged],
) -> BaseException | None:
    """Stage entries into `staged` (at most `limit`); the cause if we ran short of something."""
    for name in names:
        if limit is not None and len(staged) >= limit:
            break
        path = spool.path(MAILDROP, name)
        if skips.has(path, name):
            continue
        try:
            copy = _one(spool, name, max_size, now, skips)
        except Stalled as exc:
            return exc.cause
        except Exception as exc:  # a bug, or a kind of entry we never thought of
            skips.add(path, name, f"cannot be picked up: {describe(exc)}")
            continue
        if copy is not None:
            staged.append(copy)
    return None


def _one(spool: Spool, name: str, max_size: int, now: float, skips: SkipList) -> Staged | None:
    """Stage one entry, quarantine it, or skip it; Stalled when we are short of something."""
    if name.startswith(TEMP_PREFIX):
        clean_temp(spool, name, now, skips)
        return None
    if not is_id(name):
        quarantine(spool, name, "name is not a queue id", skips)
        return None
    try:
        return ingest(spool, name, max_size)
    except Rejected as exc:
        quarantine(spool, name, str(exc), skips)
        return None
    except OSError as exc:
        # Our side (queue/ full, out of fds): the original stays; try again later.
        raise Stalled(exc) from exc


def _commit(spool: Spool, staged: list[Staged]) -> list[str]:
    """fsync every staged copy, then link it into queue/.

    The copies are written first and synced afterwards so that one journal
    commit covers the whole batch: the first fsync does the work, the rest
    find little left to flush.
    """
    queued = []
    for item in staged:
        try:
            item.copy.enqueue()
            # Checked after the link, under the copy's flock: an admin who
            # deletes the original later finds the copy in queue/ and deletes
            # it too; one who deleted it earlier has it dropped here.
            if not _original_still_there(spool, item):
                spool.delete(item.name, QUEUE)
                log.info(kv(event="deleted-while-picked-up", id=item.name))
                continue
            queued.append(item.name)
        except FileExistsError:
            pass  # another worker linked the same submission first
        except OSError as exc:
            if is_resource_error(exc):
                raise
            log.error(kv(event="cannot-queue", id=item.name, error=exc.strerror or str(exc)))
        finally:
            item.copy.discard()
    if queued:
        spool.sync(QUEUE)
    return queued


def _original_still_there(spool: Spool, item: Staged) -> bool:
    try:
        now = os.lstat(spool.path(MAILDROP, item.name))
    except FileNotFoundError:
        return False
    st = os.fstat(item.source_fd)
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def clean_temp(spool: Spool, name: str, now: float, skips: SkipList | None = None) -> bool:
    """Remove a temp file whose writer is gone (its flock is free)."""
    path = spool.path(MAILDROP, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        quarantine(spool, name, "temp entry is not a regular file", skips)
        return True
    if remove_if_abandoned(path, now):
        log.info(kv(event="removed-abandoned", entry=name, bytes=st.st_size))
        return True
    return False


def _open_entry(path: str, max_size: int) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if is_resource_error(exc):
            raise  # out of fds or memory: nothing is wrong with the entry
        raise Rejected(f"cannot open safely: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_nlink != 1:
        problem = "has more than one hard link"
    elif st.st_size > max_size + ENVELOPE_SLACK:
        problem = f"too big ({st.st_size} bytes)"
    if problem:
        os.close(fd)
        raise Rejected(problem)
    return fd, st


def ingest(spool: Spool, name: str, max_size: int) -> Staged | None:
    """Copy one maildrop entry to a verified temp file in queue/.

    None when another worker or an admin has it. The original stays, locked,
    until pickup() has made the copy durable.
    """
    path = spool.path(MAILDROP, name)
    fd, st = _open_entry(path, max_size)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None  # another worker finished it while we waited
        if current is None or (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
            os.close(fd)
            return None
        if spool.known(name):
            # A crash after linking into queue/ but before the original went.
            intake.drop_original(spool, name)
            os.close(fd)
            return None
        copy = _copy_verified(spool, fd, st, name, max_size)
    except BaseException:
        os.close(fd)
        raise
    return Staged(name, copy, fd, st.st_uid)


def _copy_verified(
    spool: Spool, src: int, st: os.stat_result, name: str, max_size: int
) -> QueueCopy:
    size = st.st_size
    if size < record.FOOTER_LEN:
        raise Rejected("too short to be a spool record")
    tail = _read(src, record.FOOTER_LEN, size - record.FOOTER_LEN)
    try:
        message_len, envelope_len, digest = record.parse_footer(tail, size)
    except record.CorruptRecord as exc:
        raise Rejected(str(exc)) from None
    if message_len > max_size:
        raise Rejected(f"message of {message_len} bytes is over MAX_MESSAGE_SIZE")
    copy = QueueCopy(spool, name)
    try:
        writer = record.RecordWriter(copy.fd)
        check = hashlib.sha256()
        offset = 0
        while offset < message_len:
            block = _read(src, min(record.CHUNK, message_len - offset), offset)
            if not block:
                raise Rejected("file shrank while it was read")
            check.update(block)
            writer.write(block)
            offset += len(block)
        env_bytes = _read(src, envelope_len, message_len)
        check.update(env_bytes)
        if len(env_bytes) != envelope_len or check.hexdigest() != digest:
            raise Rejected("checksum mismatch: the file was changed after it was written")
        writer.finish(_trusted_envelope(env_bytes, st))
    except BaseException:
        copy.discard()
        raise
    return copy


def _read(src: int, size: int, offset: int) -> bytes:
    """pread from the submitter's file: its errors are the entry's, unless we are short."""
    try:
        return os.pread(src, size, offset)
    except OSError as exc:
        if is_resource_error(exc):
            raise
        raise Rejected(f"cannot read: {exc.strerror}") from None


def _trusted_envelope(env_bytes: bytes, st: os.stat_result) -> dict[str, object]:
    try:
        envelope = record.parse_envelope(env_bytes)
    except record.CorruptRecord as exc:
        raise Rejected(str(exc)) from None
    # The file's owner is the submitter, whatever the envelope claims.
    envelope["claimed_uid"] = envelope.get("uid")
    envelope["uid"] = st.st_uid
    try:
        envelope["user"] = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        envelope["user"] = str(st.st_uid)
    envelope["queued"] = time.time()
    return envelope


def quarantine(spool: Spool, name: str, reason: str, skips: SkipList | None = None) -> None:
    """Move a maildrop entry, whatever it is, to corrupt/ without reading it.

    What cannot be moved (a directory: renaming it elsewhere needs write
    access to it, which only its owner has) is skipped and remembered.
    """
    try:
        target = intake.quarantine(spool, name, reason)
    except intake.CannotMove as exc:
        if is_resource_error(exc.error):
            raise exc.error from None
        if skips is not None:
            why = f"{reason}; cannot move it to corrupt/: {exc.error.strerror}"
            skips.add(spool.path(MAILDROP, name), name, why)
        return
    if target is not None:
        log.warning(kv(event="quarantined", entry=name, file=f"corrupt/{target}", reason=reason))
