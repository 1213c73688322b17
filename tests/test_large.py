"""Messages over sendMail's 4 MiB cap: drafts, upload sessions and send, against
the strict fake (tests/fakegraph_large.py) with real msal, and through the worker."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest

from mssendmail import transport as transports
from mssendmail.config import Config
from mssendmail.delivery.attempt import Context, Outcome, RetryPolicy, deliver
from mssendmail.delivery.pickup import pickup
from mssendmail.errors import PermanentFailure, TemporaryFailure
from mssendmail.graph import large
from mssendmail.graph.transport import GraphTransport
from mssendmail.spool.layout import DEAD, Spool
from mssendmail.submission.writer import Submission, make_envelope
from tests.fakegraph import FakeGraph, running
from tests.fakegraph_large import (
    CHUNK_UNIT,
    MAX_CHUNK,
    FilePart,
    UploadFault,
    delivered_files,
    expected_files,
    large_state,
    make_message,
    run_measured,
)

MAILBOX = "relay@contoso.example"
BIN = Path(sys.executable).parent
MB = 1_000_000


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def pdf(n: int, seed: int = 1) -> bytes:
    """PDF-like bytes: a PDF header, then incompressible data."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + blob(n - 21, seed) + b"%%EOF\n"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(tmp_path / "fake", monkeypatch) as server:
        server.roles = ["Mail.Send", "Mail.ReadWrite"]
        yield server


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(large, "RETRY_DELAYS", (0.01, 0.01, 0.01))


def graph_config(fake: FakeGraph, tmp_path: Path) -> Config:
    (tmp_path / "queue" / "state").mkdir(parents=True, exist_ok=True)
    return Config(
        {
            **fake.config(),
            "QUEUE_DIR": str(tmp_path / "queue"),
            "TRANSPORT": "graph",
            "GRAPH_TIMEOUT": "10s",
            "SENDER": MAILBOX,
        }
    )


@pytest.fixture
def live(fake: FakeGraph, tmp_path: Path) -> Iterator[GraphTransport]:
    transport = transports.from_config(graph_config(fake, tmp_path))
    assert isinstance(transport, GraphTransport)
    yield transport
    transport.close()


def mixed_files(big: list[int]) -> list[FilePart]:
    files = [
        FilePart("logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + blob(150_000, 2), cid="logo@mss"),
        FilePart("Résumé, 日本語 (ü).xlsx", "application/vnd.ms-excel", blob(300_000, 3)),
    ]
    for i, size in enumerate(big):
        files.append(FilePart(f"report-{i}.pdf", "application/pdf", pdf(size, 10 + i)))
    return files


def check_delivered(fake: FakeGraph, files: list[FilePart]) -> None:
    state = large_state(fake)
    assert len(state.sent) == 1
    sent = state.sent[0]
    assert delivered_files(sent) == expected_files(files)
    # Headers and recipients survive in the draft, Bcc included.
    head = message_from_bytes(sent.mime, policy=default)
    assert str(head["To"]) == "alice@example.org"
    assert str(head["Bcc"]) == "hidden@example.org"
    assert sorted(sent.recipients) == ["alice@example.org", "hidden@example.org"]
    # Chunk rules, checked again on the records (the fake refuses violations).
    for put in state.puts:
        assert not put.authorization
        assert put.length <= MAX_CHUNK
        if put.status == 200:
            assert put.length % CHUNK_UNIT == 0
    assert state.drafts == {}


@pytest.mark.parametrize(("big", "size"), [([3_300_000], 5), ([9 * MB, 12 * MB], 30)])
def test_large_message_arrives_byte_identical(
    fake: FakeGraph, live: GraphTransport, big: list[int], size: int
) -> None:
    files = mixed_files(big)
    mime = make_message(files)
    assert len(mime) > 4 * 1024 * 1024 * 3 // 4  # really over sendMail's cap
    assert size * 0.8 * MB < len(mime) < size * 1.3 * MB
    assert live.send(MAILBOX, mime, "q1").status == 202
    check_delivered(fake, files)
    uploaded = [a for a in large_state(fake).sent[0].attachments if a.via == "upload"]
    assert sorted(a.size for a in uploaded) == sorted(big)  # big files used upload sessions
    assert fake.statuses("/sendMail") == []  # never tried sendMail


def test_small_attachments_that_do_not_fit_are_posted(
    fake: FakeGraph, live: GraphTransport
) -> None:
    files = [
        FilePart(f"part-{i}.dat", "application/octet-stream", blob(700_000, i)) for i in range(7)
    ]
    mime = make_message(files)
    assert live.send(MAILBOX, mime, "q1").status == 202
    check_delivered(fake, files)
    sent = large_state(fake).sent[0]
    assert {a.via for a in sent.attachments} == {"post"}
    assert len(sent.mime) <= large.DRAFT_TARGET
    assert 0 < len(sent.attachments) < len(files)  # the rest stayed in the draft


def test_mid_upload_failures_resume_from_next_expected_range(
    fake: FakeGraph, live: GraphTransport
) -> None:
    files = mixed_files([20 * MB])
    state = large_state(fake)
    # 2nd PUT: connection reset after the server kept 320 KiB of it;
    # 5th PUT: a 503 after it kept nothing.
    state.fail_put(2, UploadFault.reset(keep=CHUNK_UNIT))
    state.fail_put(5, UploadFault.error(503))
    assert live.send(MAILBOX, make_message(files), "q1").status == 202
    check_delivered(fake, files)
    starts = [p.start for p in state.puts]
    statuses = [p.status for p in state.puts]
    assert statuses[1] == 0 and 503 in statuses
    # After the reset the client asked where to go on and resumed there,
    # not at the start of the failed chunk.
    assert state.status_gets >= 1
    assert starts[2] == large.CHUNK + CHUNK_UNIT
    assert len(state.created) == 1 and state.deleted == []


def test_upload_that_keeps_failing_is_temporary_and_deletes_the_draft(
    fake: FakeGraph, live: GraphTransport
) -> None:
    state = large_state(fake)
    for n in range(1, 6):
        state.fail_put(n, UploadFault.reset())
    with pytest.raises(TemporaryFailure) as exc:
        live.send(MAILBOX, make_message(mixed_files([5 * MB])), "q1")
    assert "authtoken" not in str(exc.value) and "_upload" not in str(exc.value)
    assert state.drafts == {} and state.deleted == state.created
    assert state.sent == []


def test_permanent_failure_at_send_deletes_the_draft(fake: FakeGraph, live: GraphTransport) -> None:
    fake.send_as_denied.add(MAILBOX)
    with pytest.raises(PermanentFailure, match="ErrorSendAsDenied"):
        live.send(MAILBOX, make_message(mixed_files([4 * MB])), "q1")
    state = large_state(fake)
    assert len(state.created) == 1 and state.deleted == state.created
    assert state.drafts == {} and state.sessions == {}


# -- through the worker's attempt: dead-letter reasons ----------------------------------


def queue(spool: Spool, message: bytes) -> str:
    with Submission(spool, 200 * MB) as sub:
        sub.write(message)
        qid = sub.commit(make_envelope(MAILBOX, ["alice@example.org"]))
    assert pickup(spool, 200 * MB) == [qid]
    return qid


def attempt(spool: Spool, fake: FakeGraph, tmp_path: Path, message: bytes) -> tuple[Outcome, str]:
    cfg = graph_config(fake, tmp_path)
    transport = transports.from_config(cfg)
    qid = queue(spool, message)
    ctx = Context(
        spool=spool,
        cfg=Config({"SENDER": MAILBOX, "QUEUE_DIR": spool.root}),
        transport=transport,
        policy=RetryPolicy(retry_min=60, retry_max=3600, max_age=86400, max_attempts=None),
    )
    try:
        return deliver(ctx, qid, "queue"), qid
    finally:
        transport.close()


def dead_reason(spool: Spool, qid: str) -> str:
    assert os.path.exists(spool.path(DEAD, qid))
    with open(spool.reason_path(DEAD, qid)) as fh:
        return fh.read()


def test_missing_mail_readwrite_is_dead_lettered_with_that_reason(
    fake: FakeGraph, spool: Spool, tmp_path: Path
) -> None:
    fake.roles = ["Mail.Send"]
    outcome, qid = attempt(spool, fake, tmp_path, make_message(mixed_files([4 * MB])))
    assert outcome is Outcome.DEAD
    assert "Mail.ReadWrite" in dead_reason(spool, qid)
    assert large_state(fake).created == []


def test_signed_message_is_dead_lettered_unsplit(
    fake: FakeGraph, spool: Spool, tmp_path: Path
) -> None:
    inner = make_message(mixed_files([4 * MB]))
    body = inner.split(b"\r\n\r\n", 1)[1]
    signed = (
        b"From: relay@contoso.example\r\nTo: alice@example.org\r\nSubject: signed\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/'
        b'pkcs7-signature"; micalg=sha-256; boundary="sig-b"\r\n\r\n--sig-b\r\n'
        b'Content-Type: multipart/mixed; boundary="mix-b"\r\n\r\n'
        + body
        + b'\r\n--sig-b\r\nContent-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nMIIBAAAA\r\n--sig-b--\r\n"
    )
    outcome, qid = attempt(spool, fake, tmp_path, signed)
    assert outcome is Outcome.DEAD
    assert "signature" in dead_reason(spool, qid)
    assert large_state(fake).created == []
    assert fake.requests == [] or all("/messages" not in r.path for r in fake.requests)


# -- the split itself (no network) --------------------------------------------------------


def test_oversized_body_text_becomes_a_text_attachment() -> None:
    log = b"".join(b"line %07d of a long cron log\r\n" % i for i in range(200_000))
    mime = (
        b"From: relay@contoso.example\r\nTo: root@example.org\r\nSubject: cron\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + log
    )
    plan = large.plan(mime)
    assert [(a.name, a.content_type, a.size) for a in plan.uploads] == [
        ("message.txt", "text/plain", len(log))
    ]
    draft = message_from_bytes(plan.draft, policy=default)
    assert str(draft["To"]) == "root@example.org" and str(draft["Subject"]) == "cron"
    assert draft.get_content_type() == "text/plain" and len(plan.draft) < 1000


def test_chunks_are_320k_multiples_and_decode_exactly() -> None:
    data = blob(9 * MB + 12345, 9)
    files = [FilePart("x.bin", "application/octet-stream", data)]
    mime = make_message(files)
    plan = large.plan(mime)
    (a,) = plan.uploads
    assert a.size == len(data)
    chunks = list(large.chunks_from(mime, a.part, 0))
    assert b"".join(chunks) == data
    assert all(len(c) == large.CHUNK for c in chunks[:-1])
    assert large.CHUNK % CHUNK_UNIT == 0 and large.CHUNK <= MAX_CHUNK
    resumed = b"".join(large.chunks_from(mime, a.part, 1_000_001))
    assert resumed == data[1_000_001:]


def test_empty_multipart_keeps_a_part_and_draft_parses() -> None:
    files = [FilePart("only.pdf", "application/pdf", pdf(4 * MB))]
    mime = make_message(files).replace(b"See the attached files.", b"x")
    plan = large.plan(mime)
    draft = message_from_bytes(plan.draft, policy=default)
    assert draft.get_content_type() == "multipart/mixed"
    assert not draft.defects
    assert [a.name for a in plan.uploads] == ["only.pdf"]


# -- end to end and memory -------------------------------------------------------------


def e2e_config(tmp_path: Path, spool_dir: Path, fake: FakeGraph) -> Path:
    cfg = tmp_path / "graph.env"
    cfg.write_text(
        fake.config_text()
        + f"QUEUE_DIR={spool_dir}\nSENDER={MAILBOX}\nRETRY_MIN=1s\nRETRY_MAX=2s\n"
        "GRAPH_TIMEOUT=10s\nMAX_MESSAGE_SIZE=150MiB\n"
    )
    return cfg


def run_e2e(
    tmp_path: Path, spool_dir: Path, fake: FakeGraph, message: bytes, rcpts: list[str]
) -> int:
    """Submit through real mssendmail, deliver with mssendmail-worker --once; the
    worker's peak RSS in bytes (from wait4)."""
    cfg = e2e_config(tmp_path, spool_dir, fake)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSENDMAIL")}
    env.update(fake.env())
    env["MSSENDMAIL_CONFIG"] = str(cfg)
    msg_file = tmp_path / "msg.eml"
    msg_file.write_bytes(message)
    with open(msg_file, "rb") as fh:
        result = subprocess.run(
            [str(BIN / "mssendmail"), "-i", *rcpts],
            stdin=fh,
            capture_output=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    msg_file.unlink()
    code, peak, stderr = run_measured(
        [str(BIN / "mssendmail-worker"), "--once"], env, str(tmp_path / "rss.json")
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr
    return peak


def test_e2e_10mb_pdf_through_sendmail_and_worker(
    tmp_path: Path, spool_dir: Path, fake: FakeGraph
) -> None:
    files = [FilePart("Quarterly report.pdf", "application/pdf", pdf(10 * MB, 77))]
    run_e2e(tmp_path, spool_dir, fake, make_message(files, bcc=None), ["alice@example.org"])
    sent = large_state(fake).sent
    assert len(sent) == 1
    assert delivered_files(sent[0]) == expected_files(files)
    assert os.listdir(spool_dir / "queue") == [] and os.listdir(spool_dir / "dead") == []


@pytest.mark.slow
def test_100mb_message_arrives_and_worker_memory_stays_bounded(
    tmp_path: Path, spool_dir: Path, fake: FakeGraph
) -> None:
    files = mixed_files([60 * MB, 12 * MB])
    message = make_message(files)
    size = len(message)
    assert 95 * MB < size < 110 * MB
    del message
    rcpts = ["alice@example.org", "hidden@example.org"]
    # LF line endings, as Unix programs pipe mail: prepare converts them.
    lf = make_message(files).replace(b"\r\n", b"\n")
    peak = run_e2e(tmp_path, spool_dir, fake, lf, rcpts)
    del lf
    print(f"worker peak RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB message")
    check_delivered(fake, files)
    assert peak < 2.5 * size + 60 * 1024 * 1024, f"worker peak RSS {peak} for {size}"


def test_broken_part_without_blank_line_is_not_parsed_as_headers() -> None:
    junk = b"X" * 76 + b"\r\n"
    mime = (
        b"From: relay@contoso.example\r\nTo: a@example.org\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n--b\r\n" + junk * 60_000 + b"\r\n--b--\r\n"
    )
    plan = large.plan(mime)
    (a,) = plan.uploads
    assert a.size == len(junk) * 60_000 and a.name == "message.txt"
    draft = message_from_bytes(plan.draft, policy=default)
    assert b"hello" in plan.draft and draft.get_content_type() == "multipart/mixed"


def test_a_retry_after_a_failed_attempt_uses_a_fresh_draft(
    fake: FakeGraph, live: GraphTransport
) -> None:
    state = large_state(fake)
    for n in range(1, 5):
        state.fail_put(n, UploadFault.error(500))
    files = mixed_files([4 * MB])
    mime = make_message(files)
    with pytest.raises(TemporaryFailure):
        live.send(MAILBOX, mime, "q1")
    assert live.send(MAILBOX, mime, "q1").status == 202
    assert len(state.created) == 2 and state.deleted == state.created[:1]
    assert state.sent[0].draft_id == state.created[1]
    check_delivered(fake, files)


def test_fake_upload_session_is_strict(fake: FakeGraph, live: GraphTransport) -> None:
    import base64

    import requests

    token = live.tokens.token()
    auth = {"Authorization": f"Bearer {token}"}
    base = f"{fake.url}/v1.0/users/{MAILBOX}/messages"
    draft = requests.post(
        base,
        data=base64.b64encode(b"To: a@example.org\r\nSubject: s\r\n\r\nx\r\n"),
        headers={**auth, "Content-Type": "text/plain"},
    )
    assert draft.status_code == 201
    did = draft.json()["id"]
    item = {"AttachmentItem": {"attachmentType": "file", "name": "f.bin", "size": 1_000_000}}
    session = requests.post(
        f"{base}/{did}/attachments/createUploadSession", json=item, headers=auth
    )
    assert session.status_code == 201
    url = session.json()["uploadUrl"]
    unit = b"u" * CHUNK_UNIT

    def put(data: bytes, crange: str, **headers: str) -> int:
        return requests.put(
            url, data=data, headers={"Content-Range": crange, **headers}
        ).status_code

    assert put(unit, f"bytes 0-{CHUNK_UNIT - 1}/1000000", **auth) == 401  # no Authorization
    assert put(unit[:1000], "bytes 0-999/1000000") == 400  # not a 320 KiB multiple
    assert put(unit, f"bytes 0-{CHUNK_UNIT - 1}/999999") == 400  # wrong total
    assert put(unit, f"bytes 0-{CHUNK_UNIT}/1000000") == 400  # range != length
    assert put(unit, f"bytes {CHUNK_UNIT}-{2 * CHUNK_UNIT - 1}/1000000") == 416  # a gap
    assert put(unit, f"bytes 0-{CHUNK_UNIT - 1}/1000000") == 200
    assert requests.get(url).json()["nextExpectedRanges"] == [str(CHUNK_UNIT)]
    assert requests.get(url.split("?")[0] + "?authtoken=wrong").status_code == 404
    # Sending while the upload is unfinished is refused; deleting cleans up.
    assert requests.post(f"{base}/{did}/send", headers=auth, data=b"").status_code == 400
    assert requests.delete(f"{base}/{did}", headers=auth).status_code == 204
    assert put(unit, f"bytes {CHUNK_UNIT}-{2 * CHUNK_UNIT - 1}/1000000") == 404
    assert large_state(fake).drafts == {}
