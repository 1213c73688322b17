"""Per-message limits (issue 12, finding 3): decided before any Graph request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mssendmail.config import Config
from mssendmail.delivery.attempt import Outcome, deliver
from mssendmail.delivery.limits import KEYS, Limits
from mssendmail.errors import ConfigError, PermanentFailure
from mssendmail.graph.large import LargeSender
from mssendmail.spool.layout import ACTIVE, DEAD, Spool
from mssendmail.submission.writer import Submission, make_envelope
from tests.test_deliver import Clock, Scripted, make_ctx, queue_one

ROOT = str(Path(__file__).resolve().parent.parent)


def bomb(parts: int, size: int = 2) -> bytes:
    out = [b'From: a@example.com\nSubject: bomb\nContent-Type: multipart/mixed; boundary="b"\n\n']
    for i in range(parts):
        out.append(
            b"--b\nContent-Type: application/octet-stream\n"
            b'Content-Disposition: attachment; filename="f%d.bin"\n\n' % i + b"x" * size + b"\n"
        )
    out.append(b"--b--\n")
    return b"".join(out)


def nested(depth: int) -> bytes:
    head = b"From: a@example.com\nSubject: deep\n"
    body = b"Content-Type: text/plain\n\nleaf\n"
    for n in range(depth):
        body = (
            b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (n, n)
            + body
            + b"--b%d--\n" % n
        )
    return head + body


def dead_reason(spool: Spool, qid: str) -> str:
    text: str = json.loads(Path(spool.reason_path(DEAD, qid)).read_text())["message"]
    return text


@pytest.mark.parametrize(
    ("message", "key"),
    [
        (bomb(1500), "MAX_MIME_PARTS"),
        (bomb(300), "MAX_ATTACHMENTS"),
        (nested(25), "MAX_MIME_DEPTH"),
        (
            b"To: " + b", ".join(b"u%d@example.com" % i for i in range(50_000)) + b"\n\nx\n",
            "MAX_HEADER_RECIPIENTS",
        ),
    ],
)
def test_over_a_limit_is_a_dead_letter_naming_it_and_nothing_is_sent(
    spool: Spool, message: bytes, key: str
) -> None:
    qid = queue_one(spool, message)
    transport = Scripted()
    started = time.monotonic()
    assert deliver(make_ctx(spool, transport, Clock()), qid, "queue") is Outcome.DEAD
    assert time.monotonic() - started < 5
    assert transport.sent == []
    assert key in dead_reason(spool, qid)


def test_within_the_limits_is_sent(spool: Spool) -> None:
    qid = queue_one(spool, bomb(200))
    transport = Scripted()
    assert deliver(make_ctx(spool, transport, Clock()), qid, "queue") is Outcome.SENT
    assert len(transport.sent) == 1


def test_limits_are_config_keys_with_range_checks() -> None:
    assert Limits.from_config(Config({})) == Limits()
    assert Limits.from_config(Config({"MAX_ATTACHMENTS": "10"})).attachments == 10
    for key, (_, low, high) in KEYS.items():
        for bad in (str(low - 1), str(high + 1), "many"):
            with pytest.raises(ConfigError, match=key):
                Limits.from_config(Config({key: bad}))


class NoNetwork:
    """A GraphTransport stand-in that fails the test on any request."""

    graph_url = "https://graph.invalid"
    max_requests = 3

    @property
    def tokens(self) -> Any:
        raise AssertionError("a token was asked for")

    @property
    def session(self) -> Any:
        raise AssertionError("a Graph request was made")


def test_graph_requests_per_large_attempt_are_counted_before_the_first_request() -> None:
    from mssendmail.delivery.prepare import normalise_newlines

    mime = normalise_newlines(bomb(12, 400_000))  # ~4.8 MB: the large path, 12 posts
    sender = LargeSender(NoNetwork(), "relay@example.com", "q1")  # type: ignore[arg-type]
    with pytest.raises(PermanentFailure, match="MAX_GRAPH_REQUESTS=3"):
        sender.send(mime)


def test_sigterm_stops_the_worker_while_it_plans_a_mime_bomb(spool: Spool, tmp_path: Path) -> None:
    # 300,000 small text parts (no attachments, so MAX_ATTACHMENTS does not end
    # it early): planning them outlasts the 0.2 s wait plus STOP_GRACE many
    # times over, on an idle fast machine too. 60,000 attachments did not: an
    # idle CI machine finished them inside the grace.
    parts = [b'From: a@example.com\nSubject: bomb\nContent-Type: multipart/mixed; boundary="b"\n\n']
    parts += [b"--b\nContent-Type: text/plain\n\nx%d\n" % i for i in range(300_000)]
    parts.append(b"--b--\n")
    with Submission(spool, 1 << 25) as sub:
        sub.write(b"".join(parts))
        sub.commit(make_envelope("a@example.com", ["b@example.com"]))
    outbox = tmp_path / "out"
    outbox.mkdir()
    cfg = tmp_path / "w.env"
    cfg.write_text(
        f"QUEUE_DIR={spool.root}\nTRANSPORT=file\nOUTBOX_DIR={outbox}\n"
        "SENDER=relay@example.com\nMAX_MIME_PARTS=1000000\nMAX_ATTACHMENTS=100000\n"
    )
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r});"
        " from mssendmail.delivery.worker import main; sys.exit(main(sys.argv[1:]))"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(cfg)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not spool.ids(ACTIVE):
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # inside the parse of 300,000 parts
        assert worker.poll() is None and spool.ids(ACTIVE)
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, err = worker.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert took < 8, took
    assert b"stop-timeout" in err
    assert os.listdir(outbox) == []
