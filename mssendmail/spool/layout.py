"""The spool tree: directory layout, modes, queue ids and the one rename primitive.

A message's state is the directory it lives in (Postfix style)::

    QUEUE_DIR/
      maildrop/  3773 mssendmail:mssendmail  submissions land here; others may
                                             create files but cannot list the
                                             directory or delete what is not
                                             theirs (sticky), and every file
                                             gets the mssendmail group (setgid)
      queue/     2770  due now, owned by the worker
      active/    2770  claimed by a worker (it holds an flock on the file)
      deferred/  2770  waiting; the file's mtime is the next attempt time
      hold/      2770  held by an admin: never sent, never expires
      dead/      2770  dead-letter: <id> untouched, <id>.reason.json
      corrupt/   2770  quarantined garbage from maildrop/, with .reason.json
      meta/      2770  <id>.json: trusted uid, attempts, history, last error
      sent/      2770  <id>.json metadata of delivered mail, kept SENT_RETENTION
      state/     2770  worker heartbeat, msal caches (0600), pause records
      trigger    0622  FIFO: one byte wakes the worker; only a hint

Only this module knows the paths. Every state change is ``move()``: a
rename followed by an fsync of both directories, so a crash leaves the file
in exactly one of the two states, never in none.

This module is on the submission path: standard library only, no pathlib.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

from mssendmail.errors import SpoolError

MAILDROP = "maildrop"
QUEUE = "queue"
ACTIVE = "active"
DEFERRED = "deferred"
HOLD = "hold"
DEAD = "dead"
CORRUPT = "corrupt"
META = "meta"
SENT = "sent"
STATE = "state"
TRIGGER = "trigger"

MESSAGE_STATES = (QUEUE, ACTIVE, DEFERRED, HOLD, DEAD)

# The files in state/, all of them: whoever writes one and whoever reads it
# (the worker, `mssendmail-queue check` and `stats`) take the name from here.
HEARTBEAT_FILE = "heartbeat.json"  # the worker's liveness, rewritten every loop
PAUSE_FILE = "pause.json"  # the whole-queue pause after a configuration failure
SENTITEMS_DENIED_FILE = "sentitems-lookup.json"  # the last 403 of a Sent Items lookup
TOKEN_CACHE_FILE = "msal-token-cache.json"  # noqa: S105 (a file name)
HTTP_CACHE_FILE = "msal-http-cache.json"
MSAL_LOCK_FILE = "msal.lock"
# The fingerprint of the credential settings that filled the token cache.
CREDENTIAL_FILE = "msal-credential.txt"
# In QUEUE_DIR itself (submitters cannot reach state/): the uids at MAX_QUEUED_PER_USER.
OVER_CAP_FILE = "over-cap"

# Entry names beside a message: sent/<id>.json, meta/<id>.json, dead/<id>.reason.json.
RECORD_SUFFIX = ".json"
REASON_SUFFIX = ".reason.json"

# mode of each directory; maildrop is the only one submitters can reach.
DIR_MODES: dict[str, int] = {
    MAILDROP: 0o3773,
    QUEUE: 0o2770,
    ACTIVE: 0o2770,
    DEFERRED: 0o2770,
    HOLD: 0o2770,
    DEAD: 0o2770,
    CORRUPT: 0o2770,
    META: 0o2770,
    SENT: 0o2770,
    STATE: 0o2770,
}
ROOT_MODE = 0o755
TRIGGER_MODE = 0o622
SERVICE_USER = "mssendmail"

ID_LEN = 18
_HEX_DIGITS = "0123456789abcdef"
TEMP_PREFIX = "tmp."


def new_id(now: float | None = None) -> str:
    """A queue id: 8 hex digits of Unix time, so ids sort by submission, then 10 random."""
    seconds = int(time.time() if now is None else now)
    # os.urandom is what secrets.token_hex uses; importing secrets (hmac,
    # random, base64) is a large share of submission time (bench/RESULTS.md).
    return f"{seconds:08x}{os.urandom(5).hex()}"


def is_id(name: str) -> bool:
    # No regular expression: ``import re`` alone would be a large share of
    # submission time (pip's console-script wrapper no longer imports it for us).
    return len(name) == ID_LEN and not name.strip(_HEX_DIGITS)


def fsync_dir(path: str, via_fd: int | None = None) -> None:
    """Make a directory's entries durable.

    An unprivileged submitter cannot open maildrop/ (no read bit, by design),
    so it passes the fd of the file it has just renamed there. Where the file
    system is one whose fsync of a renamed file also commits the rename
    (rename_commits_on_fsync), that fsync does it; elsewhere we syncfs(2) the
    file system that holds both. Not sync(2): that would also wait for every
    other file system's writeback, a busy data volume's included
    (bench/RESULTS.md).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        if via_fd is None:
            raise
        if rename_commits_on_fsync(via_fd):
            os.fsync(via_fd)
        else:
            syncfs(via_fd)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# File systems on which fsync(2) of a file also makes durable the directory
# entry that its latest rename(2) created:
#   ext4 with a journal: the rename and the inode's ctime change are in one
#     jbd2 transaction, and fsync waits for the inode's transaction;
#   ext4 without one: the rename marks the inode EXT4_STATE_NEWENTRY, and fsync
#     then writes the parent directory's blocks too (ext4_sync_parent);
#   XFS: the rename logs the inode, and fsync forces the log up to it;
#   btrfs: fsync logs the inode's new name in the tree log.
# Not ext2 or ext3 by name (the old drivers do neither), not overlay, NFS, ZFS
# or anything else: those get syncfs.
RENAME_COMMITTING_FILESYSTEMS = frozenset({b"ext4", b"xfs", b"btrfs"})
MOUNTINFO = "/proc/self/mountinfo"
_MOUNTINFO_LIMIT = 4 << 20  # bounded read; the kernel writes it, but a host can have many mounts


def rename_commits_on_fsync(fd: int, mountinfo: str = MOUNTINFO) -> bool:
    """True when fd's file system is in RENAME_COMMITTING_FILESYSTEMS.

    The mount is found in /proc/self/mountinfo by the st_dev of fd; no
    /proc, no match (a btrfs subvolume not mounted on its own) or a line
    we cannot read all mean False, so the caller falls back to syncfs.
    """
    dev = os.fstat(fd).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}".encode()
    try:
        with open(mountinfo, "rb") as fh:
            text = fh.read(_MOUNTINFO_LIMIT)
    except OSError:
        return False
    for line in text.split(b"\n"):
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": the
        # optional fields end at "-", after which come the type and the source.
        fields = line.split(b" ")
        if len(fields) < 7 or fields[2] != wanted or b"-" not in fields[6:]:
            continue
        type_at = fields.index(b"-", 6) + 1
        if type_at < len(fields) and fields[type_at] in RENAME_COMMITTING_FILESYSTEMS:
            return True
    return False


def syncfs(fd: int) -> None:
    """syncfs(2): flush and wait for the whole file system holding fd.

    The stdlib has no os.syncfs, so the call goes through _ctypes, the C half
    of ctypes: importing ctypes itself (its Python half, struct, types) was
    most of what an unprivileged submission paid above root's. Where _ctypes
    lacks these private functions, or the call fails, ctypes proper does it
    (and reports errno).
    """
    try:
        import _ctypes  # only unprivileged submitters pay for this import

        call = _ctypes.call_function
        address = _ctypes.dlsym(_ctypes.dlopen(None), "syncfs")  # type: ignore[arg-type]
    except (ImportError, AttributeError, OSError):
        _syncfs_ctypes(fd)
        return
    if call(address, (fd,)) != 0:
        _syncfs_ctypes(fd)


def _syncfs_ctypes(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_atomic(path: str, data: bytes, mode: int = 0o640) -> None:
    """Write a small file by temp + fsync + rename + directory fsync."""
    directory, name = os.path.split(path)
    # Unique per call: threads of one worker may write the same file at once.
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        # Locked while we live, so sweep_temps() can tell ours from a dead writer's.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quiet(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(directory)


# An unlocked, empty temp file may belong to a writer between open() and flock().
EMPTY_TEMP_GRACE = 60.0
PRIVATE_AREAS = (QUEUE, ACTIVE, DEFERRED, HOLD, DEAD, CORRUPT, META, SENT, STATE)


def remove_if_abandoned(path: str, now: float) -> bool:
    """Delete a temp file whose writer died: every writer flocks its temp file
    before writing, and the kernel drops the lock with the process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer
        young = now - st.st_mtime < EMPTY_TEMP_GRACE
        if st.st_size == 0 and young and _writer_may_live(path):
            return False
        unlink_quiet(path)
        return True
    finally:
        os.close(fd)


def _writer_may_live(path: str) -> bool:
    """False when the temp name's pid (tmp.<name>.<pid>.<random>) is a dead process."""
    parts = os.path.basename(path).split(".")
    if len(parts) < 4 or not parts[-2].isdigit():
        return True  # maildrop temps carry no pid
    return pid_alive(int(parts[-2]))


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (someone else's counts; the pid may be reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive, owned by someone else
    return True


def sweep_temps(spool: Spool, now: float | None = None) -> list[str]:
    """Remove what killed workers and admin commands left half-written."""
    now = time.time() if now is None else now
    removed = []
    for area in PRIVATE_AREAS:
        try:
            names = os.listdir(spool.dir(area))
        except FileNotFoundError:
            continue
        for name in names:
            path = spool.path(area, name)
            if name.startswith(TEMP_PREFIX) and remove_if_abandoned(path, now):
                removed.append(f"{area}/{name}")
    return removed


def write_unsynced(path: str, data: bytes) -> None:
    """Replace a small file without fsync: for state rewritten all the time and
    harmless to lose (the worker's heartbeat). OSError after removing the temp file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        unlink_quiet(tmp)
        raise


def entry_id(name: str, suffix: str = RECORD_SUFFIX) -> str | None:
    """The queue id in an entry name such as ``<id>.json``, or None if it is not one."""
    if not name.endswith(suffix):
        return None
    queue_id = name[: -len(suffix)]
    return queue_id if is_id(queue_id) else None


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # already gone is the goal


class Spool:
    """Paths and primitive operations on one spool tree."""

    def __init__(self, root: str) -> None:
        self.root = root
        # Plain concatenation: os.path.join showed in the worker's profile (bench/drain.py).
        self._prefix = os.path.join(root, "")

    def dir(self, area: str) -> str:
        return self._prefix + area

    def path(self, area: str, name: str) -> str:
        return f"{self._prefix}{area}/{name}"

    @property
    def trigger_path(self) -> str:
        return os.path.join(self.root, TRIGGER)

    def meta_path(self, queue_id: str) -> str:
        return self.path(META, f"{queue_id}.json")

    def sent_path(self, queue_id: str) -> str:
        return self.path(SENT, f"{queue_id}.json")

    def reason_path(self, area: str, name: str) -> str:
        return self.path(area, f"{name}{REASON_SUFFIX}")

    def state_path(self, name: str) -> str:
        """A file in state/; `name` is one of the *_FILE names above."""
        return self.path(STATE, name)

    def is_sent(self, queue_id: str) -> bool:
        """Graph took this message: its sent record exists.

        sent/<id> without .json is parked: a message that was sent but whose
        record could not be written, or a record a crash left half made.
        """
        return os.path.exists(self.sent_path(queue_id)) or os.path.lexists(
            self.path(SENT, queue_id)
        )

    def expire(self, area: str, keep: float, now: float) -> None:
        """Remove the entries of `area` whose mtime is older than `keep` seconds (sent/)."""
        directory = self.dir(area)
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                if now - os.stat(path).st_mtime > keep:
                    os.unlink(path)
            except FileNotFoundError:
                continue

    def due_at(self, queue_id: str, area: str = DEFERRED) -> float:
        """When a deferred message is due: its file's mtime (FileNotFoundError if gone)."""
        return os.stat(self.path(area, queue_id)).st_mtime

    def set_due(self, queue_id: str, when: float, area: str = DEFERRED) -> None:
        """Make the message due at `when` by setting its mtime (FileNotFoundError if gone)."""
        os.utime(self.path(area, queue_id), (when, when))

    def sync(self, area: str) -> None:
        """Make an area's new and removed entries durable (fsync its directory)."""
        fsync_dir(self.dir(area))

    def move(
        self, queue_id: str, old: str, new: str, new_name: str | None = None, durable: bool = True
    ) -> None:
        """The one state transition: rename, then make both directories durable.

        durable=False is only for moves whose loss in a crash is harmless:
        queue/ -> active/ (a claim; recovery puts active/ back into queue/)
        and active/ -> sent/ after a send (a power cut may resend, never lose).
        """
        os.rename(self.path(old, queue_id), self.path(new, new_name or queue_id))
        if durable:
            fsync_dir(self.dir(new))
            if old != new:
                fsync_dir(self.dir(old))

    def delete(self, queue_id: str, area: str) -> None:
        """Remove a message for good and make its directory durable (FileNotFoundError if gone)."""
        os.unlink(self.path(area, queue_id))
        fsync_dir(self.dir(area))

    def drop_reason(self, area: str, name: str) -> None:
        """Remove the reason record beside an entry of dead/ or corrupt/; gone is fine."""
        unlink_quiet(self.reason_path(area, name))

    def release_dead(self, queue_id: str) -> None:
        """dead/ -> queue/ (durable), then drop the dead letter's reason record."""
        self.move(queue_id, DEAD, QUEUE)
        self.drop_reason(DEAD, queue_id)

    def ids(self, area: str) -> list[str]:
        """Queue ids in an area, oldest first (ids sort by time)."""
        try:
            names = os.listdir(self.dir(area))
        except FileNotFoundError:
            return []
        return sorted(name for name in names if is_id(name))

    def locate(self, queue_id: str) -> str | None:
        """The state a message is in, or None."""
        if not is_id(queue_id):
            return None
        for area in (*MESSAGE_STATES, MAILDROP):
            if os.path.lexists(self.path(area, queue_id)):
                return area
        return None

    def known(self, queue_id: str) -> bool:
        """Seen before: queued anywhere, or recorded (or parked) as sent."""
        return (
            self.locate(queue_id) not in (None, MAILDROP)
            or os.path.exists(self.sent_path(queue_id))
            or os.path.lexists(self.path(SENT, queue_id))
        )

    # ---- submission: maildrop/tmp.<id> -> maildrop/<id> (submission/writer.py)

    def submission_temp(self, queue_id: str) -> str:
        """The temp name a submission is written under before submit()."""
        return self.path(MAILDROP, TEMP_PREFIX + queue_id)

    def submit(self, queue_id: str, fd: int) -> None:
        """fsync the written submission, then rename it to its final name.

        The caller then runs sync_submitted() before it reports success; an
        OSError from that one leaves the message under its final name, not
        known durable (withdraw() takes it back).
        """
        os.fsync(fd)
        os.rename(self.submission_temp(queue_id), self.path(MAILDROP, queue_id))

    def sync_submitted(self, fd: int) -> None:
        """Make maildrop/'s new entry durable (via the submission's fd: see fsync_dir)."""
        fsync_dir(self.dir(MAILDROP), via_fd=fd)

    def withdraw(self, queue_id: str, *, temp: bool) -> None:
        """Remove an unfinished (temp=True) or an unconfirmed submission; gone is fine."""
        unlink_quiet(self.submission_temp(queue_id) if temp else self.path(MAILDROP, queue_id))

    def over_cap_uids(self) -> list[bytes]:
        """The uids the worker published as at MAX_QUEUED_PER_USER; [] when none or unreadable."""
        try:
            with open(os.path.join(self.root, OVER_CAP_FILE), "rb") as fh:
                return fh.read(1 << 20).split()
        except OSError:
            return []  # no file: nobody is over the cap, or no cap

    def publish_over_cap(self, uids: list[int]) -> None:
        """Write the over-cap list (mode 0644, one uid a line; not fsynced: a hint)."""
        path = os.path.join(self.root, OVER_CAP_FILE)
        text = "".join(f"{uid}\n" for uid in uids)
        if not text:
            unlink_quiet(path)
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError:
            unlink_quiet(tmp)

    def wake(self, flush: bool = False) -> None:
        """Poke the worker through the trigger FIFO; no reader is not an error.

        b"\n" means "new mail"; b"F" (sendmail -q) asks it to retry deferred
        mail now. The worker rate-limits flushes, so anyone may send one.
        """
        try:
            fd = os.open(self.trigger_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b"F" if flush else b"\n")
        except OSError:
            pass  # FIFO full: the worker is already awake
        finally:
            os.close(fd)


def service_ids() -> tuple[int, int] | None:
    """(uid, gid) of the mssendmail user when it exists, for root-run init."""
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def init_tree(root: str) -> list[str]:
    """Create or repair the spool tree; returns what it changed (idempotent).

    As root with a mssendmail user, everything is owned by that user; otherwise
    (a quick start as a normal user) by the caller, with the same modes.
    """
    owner = service_ids() if os.geteuid() == 0 else None
    changes: list[str] = []
    if not os.path.isdir(root):
        os.makedirs(root, ROOT_MODE)
        changes.append(f"created {root}")
    _fix(root, ROOT_MODE, owner, [] if changes else changes)
    for area, mode in DIR_MODES.items():
        path = os.path.join(root, area)
        if not os.path.isdir(path):
            os.mkdir(path, mode)
            changes.append(f"created {path}")
        _fix(path, mode, owner, [] if changes and changes[-1].endswith(path) else changes)
    trigger = os.path.join(root, TRIGGER)
    if not os.path.exists(trigger):
        os.mkfifo(trigger, TRIGGER_MODE)
        changes.append(f"created {trigger}")
    elif not stat.S_ISFIFO(os.lstat(trigger).st_mode):
        raise SpoolError(f"{trigger} exists and is not a FIFO; remove it and run init again")
    _fix(trigger, TRIGGER_MODE, owner, [] if changes and changes[-1].endswith(trigger) else changes)
    if changes:
        fsync_dir(root)
    return changes


def _fix(path: str, mode: int, owner: tuple[int, int] | None, changes: list[str]) -> None:
    st = os.lstat(path)
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)
        changes.append(f"chown {SERVICE_USER}:{SERVICE_USER} {path}")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)  # after chown: chown clears setgid
        changes.append(f"chmod {mode:04o} {path}")
