"""Hostile spool and input: whatever a local user plants or feeds, nothing leaks or crashes.

Goes beyond tests/test_pickup.py: the real worker over a maildrop/ full of
traps (links to another user's record, FIFOs, sparse giants, garbage,
directories), an entry swapped for a symlink between pickup's open() and
its identity check, a submitter rewriting its record while the worker
copies it (never sent half-changed), header injection through every
envelope flag, and hypothesis-generated argv and stdin through the real
program (the in-process property test lives in tests/test_sendmail.py;
this one adds the queued-record invariants and the real entry point).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssendmail.delivery import pickup as pickup_mod
from mssendmail.delivery.pickup import ENVELOPE_SLACK, pickup
from mssendmail.spool import record
from mssendmail.spool.layout import CORRUPT, MAILDROP, QUEUE, Spool, new_id
from mssendmail.submission.writer import Submission, make_envelope
from tests.reliability_helpers import (
    MSSENDMAIL,
    RCPT,
    assert_no_traceback,
    delivered,
    env_for,
    fake_graph,
    graph_config,
    make_spool,
    message,
    run_worker,
)

SYSEXITS = {0, 64, 65, 66, 67, 69, 70, 71, 73, 74, 75, 76, 77, 78}
MAX = 1 << 20


def record_bytes(spool: Spool, marker: str, body: bytes = b"body\n") -> bytes:
    """A valid record as submission would write it (written aside, then removed)."""
    with Submission(spool, MAX) as sub:
        sub.write(message(marker, body=body))
        qid = sub.commit(make_envelope("", [RCPT], now=1.0))  # fixed time: fixed length
    path = spool.path(MAILDROP, qid)
    data = Path(path).read_bytes()
    os.unlink(path)
    return data


def corrupt_reasons(spool: Spool) -> dict[str, str]:
    out = {}
    for name in os.listdir(spool.dir(CORRUPT)):
        if name.endswith(".reason.json"):
            doc = json.loads(Path(spool.dir(CORRUPT), name).read_text())
            out[doc["original_name"]] = doc["reason"]
    return out


def test_worker_quarantines_every_trap_follows_no_link_and_sends_only_the_real_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "record"
    victim.write_bytes(record_bytes(spool, "victim-secret"))  # a valid record, not ours
    victim_before = victim.read_bytes()
    drop = Path(spool.dir(MAILDROP))
    traps: dict[str, str] = {}

    def plant(name: str, why: str) -> str:
        traps[name] = why
        return str(drop / name)

    os.symlink(victim, plant("0000000000000000a1", "cannot open safely"))
    os.symlink(victim, plant("tmp.0000000000000000a2", "temp entry is not a regular file"))
    os.link(victim, plant("0000000000000000a3", "more than one hard link"))
    os.mkfifo(plant("0000000000000000a4", "not a regular file"))
    os.mkfifo(plant("tmp.0000000000000000a5", "not a regular file"))
    with open(plant("0000000000000000a6", "too big"), "wb") as fh:
        fh.truncate(MAX + ENVELOPE_SLACK + 1)  # sparse: costs no disk
    Path(plant("0000000000000000a7", "no record footer")).write_bytes(os.urandom(5000))
    os.mkdir(plant("0000000000000000a8", "not a regular file"))
    Path(plant("not-an-id", "not a queue id")).write_bytes(b"hello")
    edited = bytearray(record_bytes(spool, "edited"))
    edited[edited.index(b"body")] = ord(b"B")
    Path(plant("0000000000000000a9", "checksum mismatch")).write_bytes(bytes(edited))
    torn = record_bytes(spool, "torn")[:-20]
    Path(plant("0000000000000000aa", "no record footer")).write_bytes(torn)

    with fake_graph(tmp_path / "fake", monkeypatch) as fake:
        cfg = graph_config(tmp_path / "h.env", Path(spool.root), fake, MAX_MESSAGE_SIZE="1M")
        with Submission(spool, MAX) as sub:
            sub.write(message("legit"))
            sub.commit(make_envelope("", [RCPT]))
        result = run_worker(cfg, fake, timeout=60)  # a FIFO must not block it
        assert result.returncode == 0, result.stderr
        assert_no_traceback(result.stderr)
        assert delivered(fake) == {"legit": 1}

    assert os.listdir(drop) == []
    reasons = corrupt_reasons(spool)
    assert set(reasons) == set(traps)
    for name, why in traps.items():
        assert why in reasons[name], (name, reasons[name])
    assert victim.read_bytes() == victim_before and os.stat(victim).st_nlink == 2
    # The links were moved as links, never resolved into copies.
    corrupt = Path(spool.dir(CORRUPT))
    assert sum(p.is_symlink() for p in corrupt.iterdir()) == 2
    for p in corrupt.iterdir():
        if p.is_symlink():
            assert os.readlink(p) == str(victim)


def test_entry_swapped_for_a_symlink_between_open_and_check_is_not_followed(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim-record"
    victim.write_bytes(record_bytes(spool, "victim-secret"))
    with Submission(spool, MAX) as sub:
        sub.write(message("mine"))
        qid = sub.commit(make_envelope("", [RCPT]))
    path = spool.path(MAILDROP, qid)
    real_flock = fcntl.flock
    swapped = []

    def flock(fd: int, op: int) -> None:
        real_flock(fd, op)
        if not swapped and os.path.exists(path) and not os.path.islink(path):
            os.unlink(path)  # the attacker wins the race right after open()
            os.symlink(victim, path)
            swapped.append(True)

    monkeypatch.setattr(pickup_mod, "fcntl", SimpleNamespace(**{**vars(fcntl), "flock": flock}))
    assert pickup(spool, MAX) == []
    monkeypatch.undo()
    assert swapped
    assert pickup(spool, MAX) == []  # the symlink itself is now quarantined
    assert os.listdir(spool.dir(QUEUE)) == []
    assert victim.read_bytes().count(b"victim-secret") == 1
    reasons = corrupt_reasons(spool)
    assert qid in reasons and "cannot open safely" in reasons[qid]


def test_a_record_rewritten_while_the_worker_copies_it_is_never_queued_half_changed(
    spool: Spool,
) -> None:
    """The submitter flips its file between two valid records, piece by piece.

    Whatever pickup copies must be exactly one of the two versions (both are
    the submitter's own), or be quarantined; never a mix.
    """
    a = record_bytes(spool, "version-A", b"A" * 900_000 + b"\n")
    b = record_bytes(spool, "version-B", b"B" * 900_000 + b"\n")
    assert len(a) == len(b)
    outcomes = {"A": 0, "B": 0, "corrupt": 0}
    # At least 20 trials, and on until one copy caught the file mid-change: on
    # an idle machine a copy can outrun the editor many times in a row.
    trial = 0
    while trial < 20 or (not outcomes["corrupt"] and trial < 400):
        trial += 1
        qid = new_id()
        path = spool.path(MAILDROP, qid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, a)
        stop, flipping = threading.Event(), threading.Event()

        def flip(
            fd: int = fd, stop: threading.Event = stop, flipping: threading.Event = flipping
        ) -> None:
            versions, i = (b, a), 0
            while not stop.is_set():
                data = versions[i % 2]
                for off in range(0, len(data), 64 * 1024):
                    os.pwrite(fd, data[off : off + 64 * 1024], off)
                    flipping.set()
                i += 1

        editor = threading.Thread(target=flip)
        editor.start()
        flipping.wait(10)  # the copy starts while the file is changing
        try:
            queued = pickup(spool, MAX)
        finally:
            stop.set()
            editor.join()
            os.close(fd)
        if not queued:
            outcomes["corrupt"] += 1
            assert qid in corrupt_reasons(spool)
            continue
        assert queued == [qid]
        with open(spool.path(QUEUE, qid), "rb") as fh:
            _, size = record.verify(fh)
            body = record.read_message(fh, size)
        kind = "A" if b"version-A" in body else "B"
        assert body == message(f"version-{kind}", body=kind.encode() * 900_000 + b"\n"), trial
        outcomes[kind] += 1
        os.unlink(spool.path(QUEUE, qid))
    print(outcomes)
    assert outcomes["corrupt"] > 0  # the race was really run


# ---- header injection and generated input through the real program ---------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-f", "a@example.com\r\nBcc: evil@example.net", RCPT],
        ["-f", "a@example.com\nBcc: evil@example.net", RCPT],
        ["-fa@example.com\rX-Evil: 1", RCPT],
        ["-F", "Name\r\nBcc: evil@example.net", RCPT],
        ["-F", "Name\nSubject: forged", RCPT],
        ["-FName\rX: y", RCPT],
        ["-f", "<a@example.com>\n", RCPT],
        [f"{RCPT}\r\nBcc: evil@example.net"],
        ["-t", "-f", "a@example.com\n"],
    ],
)
def test_header_injection_through_envelope_flags_is_refused(
    tmp_path: Path, argv: list[str]
) -> None:
    spool = make_spool(tmp_path / "queue")
    cfg = tmp_path / "s.env"
    cfg.write_text(f"QUEUE_DIR={spool.root}\n")
    result = subprocess.run(
        [MSSENDMAIL, *argv],
        input=message("inject"),
        capture_output=True,
        env=env_for(cfg),
        timeout=30,
    )
    err = result.stderr.decode()
    assert result.returncode == 65, err
    assert err.startswith("mssendmail: ") and err.count("\n") == 1 and ";" in err
    assert_no_traceback(err)
    assert os.listdir(spool.dir(MAILDROP)) == []


_flag = st.sampled_from(
    ["-t", "-i", "-oi", "-f", "-F", "-bp", "-bm", "-v", "-B", "-oem", "-N", "-R", "-V", "--", "-"]
)
_nasty = st.text(alphabet=st.sampled_from([*'ab@.<>,;:" \t\r\n()\\é€-', "\udcff"]), max_size=16)
_arg = st.one_of(_flag, _nasty, st.sampled_from([RCPT, "root", "a@x", "<>", "-fa@x", "-Fx"]))


class Checked:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.seen: set[str] = set()

    def new_records(self) -> list[tuple[dict[str, Any], bytes]]:
        out = []
        for name in sorted(set(os.listdir(self.spool.dir(MAILDROP))) - self.seen):
            self.seen.add(name)
            assert not name.startswith("tmp."), "a temp file outlived its submitter"
            with open(self.spool.path(MAILDROP, name), "rb") as fh:
                envelope, size = record.verify(fh)
                out.append((envelope, record.read_message(fh, size)))
        return out


@pytest.fixture(scope="module")
def gen_spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checked, Path]:
    base = tmp_path_factory.mktemp("hostile-gen")
    spool = make_spool(base / "queue")
    cfg = base / "s.env"
    cfg.write_text(f"QUEUE_DIR={spool.root}\nMAX_MESSAGE_SIZE=4k\n")
    return Checked(spool), cfg


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    argv=st.lists(_arg, max_size=6),
    data=st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda h, b: h + b"\n\n" + b,
            st.sampled_from([b"To: a@x", b"To: <>", b"Cc: ,,", b"Bcc: a@@b", b"To: x\r"]),
            st.binary(max_size=6000),
        ),
    ),
)
def test_generated_argv_and_stdin_through_the_real_program(
    gen_spool: tuple[Checked, Path], argv: list[str], data: bytes
) -> None:
    checked, cfg = gen_spool
    args = [a.encode("utf-8", "surrogateescape") for a in argv if "\0" not in a]
    result = subprocess.run(
        [MSSENDMAIL.encode(), *args], input=data, capture_output=True, env=env_for(cfg), timeout=30
    )
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode in SYSEXITS, err
    assert_no_traceback(err)
    new = checked.new_records()
    if result.returncode != 0:
        assert new == [], "a refused submission left a record"
        assert err.count("\n") == 1 and err.startswith(("mssendmail: ", "mailq: ")), err
        return
    assert len(new) <= 1  # 0 for -bp/-bi/-V modes that queue nothing
    for envelope, body in new:
        assert data.startswith(body)  # byte for byte, at most cut at a lone dot
        fields = [envelope["sender"], envelope.get("full_name") or "", *envelope["recipients"]]
        assert not any(c in f for f in fields for c in "\r\n\0"), envelope
        assert envelope["recipients"], envelope
        assert len(body) <= 4096
