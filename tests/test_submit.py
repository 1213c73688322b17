"""Submission (durable write into maildrop/), make_envelope and the record format."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mssendmail.errors import DataError, SpoolError
from mssendmail.spool import layout as spool_mod
from mssendmail.spool import record
from mssendmail.spool.layout import MAILDROP, TEMP_PREFIX, Spool, is_id, new_id
from mssendmail.spool.record import CorruptRecord
from mssendmail.submission.writer import FILE_MODE, Submission, make_envelope


def write_one(spool: Spool, data: bytes, recipients: list[str] | None = None) -> str:
    with Submission(spool, 10**6) as sub:
        sub.write(data)
        return sub.commit(make_envelope("s@x", recipients or ["r@x"]))


def read_record(spool: Spool, queue_id: str) -> tuple[dict[str, Any], bytes]:
    with open(spool.path(MAILDROP, queue_id), "rb") as fh:
        envelope, size = record.verify(fh)
        return envelope, record.read_message(fh, size)


def test_commit_makes_a_verified_record(spool: Spool) -> None:
    queue_id = write_one(spool, b"Subject: x\n\nhello\n")
    assert is_id(queue_id)
    assert os.listdir(spool.dir(MAILDROP)) == [queue_id]
    envelope, body = read_record(spool, queue_id)
    assert body == b"Subject: x\n\nhello\n"
    assert envelope["sender"] == "s@x" and envelope["recipients"] == ["r@x"]
    st_ = os.stat(spool.path(MAILDROP, queue_id))
    assert stat.S_IMODE(st_.st_mode) == FILE_MODE
    assert st_.st_gid == os.stat(spool.dir(MAILDROP)).st_gid  # setgid directory


def test_umask_does_not_hide_the_file_from_the_worker(spool: Spool) -> None:
    old = os.umask(0o077)
    try:
        queue_id = write_one(spool, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool.path(MAILDROP, queue_id)).st_mode) == FILE_MODE


def test_envelope_fields() -> None:
    env = make_envelope(
        "s@x",
        ["a@x"],
        from_headers=True,
        argv_recipients=["a@x"],
        full_name="Cron",
        source="sendmail",
        now=1234.5,
    )
    assert env["v"] == record.VERSION
    assert env["uid"] == os.getuid() and isinstance(env["user"], str) and env["user"]
    assert env["time"] == 1234.5 and env["from_headers"] is True
    assert env["full_name"] == "Cron" and env["argv_recipients"] == ["a@x"]
    record.validate_envelope(env)


def test_temp_file_is_locked_and_named_while_writing(spool: Spool) -> None:
    with Submission(spool, 100) as sub:
        sub.write(b"partial")
        names = os.listdir(spool.dir(MAILDROP))
        assert names == [TEMP_PREFIX + sub.id]
        fd = os.open(sub.temp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert os.listdir(spool.dir(MAILDROP)) == []  # leaving without commit aborts


def test_size_limit_removes_the_partial_file(spool: Spool) -> None:
    with Submission(spool, 10) as sub:
        sub.write(b"0123456789")
        with pytest.raises(DataError, match="MAX_MESSAGE_SIZE"):
            sub.write(b"x")
        assert os.listdir(spool.dir(MAILDROP)) == []


def test_missing_spool_is_a_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError) as info:
        Submission(Spool(str(tmp_path / "none")), 10)
    assert "mssendmail-queue init" in str(info.value)


def test_disk_full_message(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    with Submission(spool, 100) as sub:
        real = os.write

        def full(fd: int, data: Any) -> int:
            if fd == sub.fd:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(SpoolError, match="free disk space"):
            sub.write(b"x")
    assert os.listdir(spool.dir(MAILDROP)) == []


def test_commit_order_fsyncs_before_and_after_rename(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (calls.append("rename"), real_rename(a, b))[1])
    write_one(spool, b"x")
    assert calls[:3] == ["fsync", "rename", "fsync"]


def _deny_maildrop_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Open maildrop/ as an unprivileged submitter would: EACCES (mode 3773)."""
    real_open = os.open

    def no_dir_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY and str(path).endswith(MAILDROP):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_dir_open)


def test_directory_fsync_falls_back_to_syncfs(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unprivileged, on a file system not known to commit a rename on fsync: syncfs."""
    synced: list[int] = []
    _deny_maildrop_open(monkeypatch)
    monkeypatch.setattr(spool_mod, "rename_commits_on_fsync", lambda fd: False)
    monkeypatch.setattr(spool_mod, "syncfs", synced.append)
    write_one(spool, b"x")
    assert len(synced) == 1


def test_unprivileged_commit_fsyncs_the_renamed_file_where_that_commits_the_rename(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4, XFS, btrfs: fsync of the renamed file makes maildrop/'s entry durable."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    _deny_maildrop_open(monkeypatch)

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a: str, b: str) -> None:
        calls.append(("rename", b))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(spool_mod, "rename_commits_on_fsync", lambda fd: True)
    monkeypatch.setattr(spool_mod, "syncfs", lambda fd: pytest.fail("syncfs on the fast path"))
    queue_id = write_one(spool, b"x")
    final = spool.path(MAILDROP, queue_id)
    assert [name for name, _ in calls] == ["fsync", "rename", "fsync"]
    assert calls[1][1] == final
    assert calls[2][1] == os.path.realpath(final)  # the file under its new name


def _mountinfo(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    ("fstype", "optional", "expected"),
    [
        ("ext4", "", True),
        ("xfs", " shared:1", True),
        ("btrfs", " shared:1 master:2", True),
        ("ext3", "", False),  # the name alone does not say which driver runs it
        ("ext2", "", False),
        ("tmpfs", "", False),
        ("overlay", "", False),
        ("nfs4", "", False),
        ("zfs", "", False),
    ],
)
def test_rename_commits_on_fsync_by_the_file_systems_type(
    tmp_path: Path, fstype: str, optional: str, expected: bool
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        dev = os.fstat(fd).st_dev
        here = f"{os.major(dev)}:{os.minor(dev)}"
        info = _mountinfo(
            tmp_path,
            "22 27 0:21 / /proc rw,relatime - proc proc rw",
            f"27 1 {here} / /var/spool\\040x rw,relatime{optional} - {fstype} /dev/vda rw",
        )
        assert spool_mod.rename_commits_on_fsync(fd, info) is expected
    finally:
        os.close(fd)


def test_rename_commits_on_fsync_is_false_when_it_cannot_tell(tmp_path: Path) -> None:
    """No /proc (a chroot), no line for this device, or lines we cannot parse: syncfs."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        dev = os.fstat(fd).st_dev
        here = f"{os.major(dev)}:{os.minor(dev)}"
        assert not spool_mod.rename_commits_on_fsync(fd, str(tmp_path / "missing"))
        assert not spool_mod.rename_commits_on_fsync(fd, str(tmp_path))  # a directory
        other = _mountinfo(tmp_path, "27 1 999:999 / / rw - ext4 /dev/sdz rw")
        assert not spool_mod.rename_commits_on_fsync(fd, other)
        broken = _mountinfo(
            tmp_path,
            f"27 1 {here} / / rw - ",  # no type after the separator
            f"27 1 {here} / /x rw ext4",  # no separator at all
            f"27 1 {here}",
            "",
            "\x00\xff garbage",
        )
        assert not spool_mod.rename_commits_on_fsync(fd, broken)
    finally:
        os.close(fd)


def test_rename_commits_on_fsync_reads_this_hosts_mount_table(tmp_path: Path) -> None:
    """The real /proc/self/mountinfo: the answer matches what findmnt says of tmp_path."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        answer = spool_mod.rename_commits_on_fsync(fd)
    finally:
        os.close(fd)
    proc = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"findmnt cannot tell the file system type: {proc.stderr.strip()}")
    assert answer is (proc.stdout.strip().encode() in spool_mod.RENAME_COMMITTING_FILESYSTEMS)


def test_syncfs_flushes_and_reports_errors(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        spool_mod.syncfs(fd)  # the fast path: _ctypes, no ctypes
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        spool_mod.syncfs(fd)  # closed: the ctypes fallback reports errno
    assert info.value.errno == errno.EBADF


def test_syncfs_without_private_ctypes_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python whose _ctypes lacks call_function still syncs, through ctypes."""
    import _ctypes

    monkeypatch.delattr(_ctypes, "call_function")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        spool_mod.syncfs(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        spool_mod.syncfs(fd)
    assert info.value.errno == errno.EBADF


def test_syncfs_does_not_import_ctypes(tmp_path: Path) -> None:
    """Importing ctypes proper is what the unprivileged submission path must not pay for."""
    code = (
        "import os, sys; from mssendmail.spool.layout import syncfs;"
        f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY); syncfs(fd);"
        "print('ctypes' in sys.modules, '_ctypes' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_failed_commit_takes_the_message_back(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: str, via_fd: int | None = None) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr("mssendmail.spool.layout.fsync_dir", broken)
    with pytest.raises(SpoolError):
        write_one(spool, b"x")
    assert os.listdir(spool.dir(MAILDROP)) == []


def test_ids_are_unique_and_time_ordered() -> None:
    ids = {new_id(1_700_000_000) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(is_id(i) and i.startswith(f"{1_700_000_000:08x}") for i in ids)
    assert new_id(1_700_000_000) < new_id(1_700_000_001)


# ---- record format ------------------------------------------------------------


def test_torn_record_is_detected(spool: Spool) -> None:
    queue_id = write_one(spool, b"hello world\n" * 100)
    path = spool.path(MAILDROP, queue_id)
    size = os.path.getsize(path)
    for cut in (0, 10, size // 2, size - record.FOOTER_LEN, size - 1):
        with open(path, "rb") as fh:
            data = fh.read()
        torn = Path(path + ".torn")
        torn.write_bytes(data[:cut])
        with open(torn, "rb") as fh, pytest.raises(CorruptRecord):
            record.verify(fh)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=255))
@example(position=211, flip=ord("0") ^ ord("_"))  # "0_000211" == 211 to int()
def test_any_changed_byte_is_detected(position: int, flip: int) -> None:
    body = b"To: a@x\n\nbody\n"
    env = record.encode_envelope(make_envelope("", ["a@x"]))
    digest = hashlib.sha256(body + env).hexdigest()
    data = bytearray(body + env + record.footer(len(body), len(env), digest))
    _verify_bytes(bytes(data))  # the pristine record is fine
    data[position % len(data)] ^= flip
    with pytest.raises(CorruptRecord):
        _verify_bytes(bytes(data))


def _verify_bytes(data: bytes) -> None:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        record.verify(fh)


@pytest.mark.parametrize(
    "change",
    [
        {"recipients": []},
        {"recipients": ["a@x\r\nBcc: evil@y"]},
        {"sender": "s@x\nX: y"},
        {"full_name": "N\nBcc: x"},
        {"v": 99},
        {"time": "yesterday"},
    ],
)
def test_hostile_envelopes_are_rejected(change: dict[str, Any]) -> None:
    env = make_envelope("", ["a@x"])
    env.update(change)
    with pytest.raises(CorruptRecord):
        record.validate_envelope(env)


@given(st.binary(max_size=5000))
def test_writer_digest_matches_hashlib(data: bytes) -> None:
    hasher = record.new_sha256()
    hasher.update(data)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_submission_path_does_not_load_heavy_modules() -> None:
    """Each of these costs 1-10 ms of the ~18 ms budget (bench/submit.py, docs/submission.md)."""
    code = (
        "import sys, mssendmail.submission.sendmail, mssendmail.submission.writer,"
        " mssendmail.config;"
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    loaded = set(proc.stdout.split())
    assert "mssendmail.submission.writer" in loaded, proc.stderr
    heavy = {
        "typing",
        "secrets",
        "random",
        "_hashlib",
        "hashlib",
        "email",
        "msal",
        "requests",
        "filelock",
        "dotenv",
        "pathlib",
        "dataclasses",
        "contextlib",
        "ctypes",
        "_ctypes",  # only an unprivileged commit off ext4, XFS and btrfs imports it
        "json",
        "signal",
        "email.utils",
        "re",
        "enum",
        "collections",
    }
    assert heavy & loaded == set()


# ---- concurrency --------------------------------------------------------------


def _submit_many(root: str, worker: int, count: int) -> None:
    spool = Spool(root)
    for seq in range(count):
        with Submission(spool, 10**6) as sub:
            sub.write(f"X-Marker: {worker}-{seq}\n\n".encode())
            sub.commit(make_envelope("", [f"w{worker}@x"]))


def test_concurrent_submitters(spool: Spool) -> None:
    workers, count = 8, 25
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_submit_many, args=(spool.root, w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    names = os.listdir(spool.dir(MAILDROP))
    assert len(names) == workers * count and all(is_id(n) for n in names)
    markers = set()
    for name in names:
        envelope, body = read_record(spool, name)
        marker = body.split(b": ", 1)[1].split(b"\n")[0].decode()
        assert envelope["recipients"] == [f"w{marker.split('-')[0]}@x"]
        markers.add(marker)
    assert markers == {f"{w}-{s}" for w in range(workers) for s in range(count)}


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), _json_values, max_size=8))
def test_envelope_encoder_matches_json_dumps(value: dict[str, Any]) -> None:
    assert record.encode_envelope(value) == (
        json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    )


def test_envelope_encoder_falls_back_for_other_types() -> None:
    assert record.encode_envelope({"a": (1, 2), "b": float("inf")}) == b'{"a":[1,2],"b":Infinity}'


def test_envelope_json_is_compact_and_sorted() -> None:
    env = make_envelope("s@x", ["a@x"], now=1.0)
    raw = record.encode_envelope(env)
    assert json.loads(raw) == env
    assert raw == json.dumps(env, separators=(",", ":"), sort_keys=True).encode()
