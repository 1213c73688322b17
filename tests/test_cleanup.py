"""SENT_ITEMS=delete: the copies of what was sent go, nothing else, across a worker restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mssendmail.spool.layout import STATE
from mssendmail.submission.writer import Submission, make_envelope
from tests.fakegraph_sentitems import SentCopy
from tests.reliability_helpers import (
    SENDER,
    assert_no_traceback,
    fake_graph,
    graph_config,
    make_spool,
    message_areas,
    queue_direct,
    run_worker,
)

REUSED = "<reused@client.example>"


def jobs(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / STATE) if n.startswith("cleanup-"))


def test_delete_removes_only_what_was_sent_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    root = Path(spool.root)
    with fake_graph(tmp_path / "fake", monkeypatch, roles=["Mail.Send", "Mail.ReadWrite"]) as fake:
        fake.sent_items_delay = 2.5  # copies appear after the first worker has exited
        # Not ours: another client's message, and an older one with the Message-ID
        # that one of our messages reuses.
        with fake._lock:
            box = fake._sent_items.setdefault(SENDER, {})
            for cid, mid, age in (("other", "<x@other.example>", 0), ("old", REUSED, 3600)):
                when = time.time() - age
                box[cid] = SentCopy(cid, SENDER, mid, "not ours", when, when)
        cfg = graph_config(
            tmp_path / "c.env", root, fake, SENT_ITEMS="delete", SENT_ITEMS_DELAY="1s"
        )
        queue_direct(spool, [f"del-{i}" for i in range(4)])
        with Submission(spool, 1 << 20) as sub:
            sub.write(
                f"To: alice@example.org\nSubject: del-4\nMessage-ID: {REUSED}\n\nx\n".encode()
            )
            sub.commit(make_envelope("", ["alice@example.org"]))
        first = run_worker(cfg, fake)
        assert first.returncode == 0, first.stderr
        assert_no_traceback(first.stderr)
        assert len(fake.messages) == 5
        assert len(jobs(root)) == 5  # durable jobs wait for copies not yet filed
        time.sleep(3.0)
        assert len(fake.sent_items_view(SENDER)) == 7
        second = run_worker(cfg, fake)  # a new process: the jobs survived the restart
        assert second.returncode == 0, second.stderr
        assert_no_traceback(second.stderr)
        left = sorted(c.id for c in fake.sent_items_view(SENDER))
        deleted = [(d.internet_message_id, d.how) for d in fake.deletions]
        ours = {str(m.message_id) for m in fake.messages}
    assert left == ["old", "other"]
    assert len(deleted) == 5
    assert {mid for mid, _ in deleted} == ours
    assert {how for _, how in deleted} == {"permanentDelete"}
    assert jobs(root) == []
    assert not any(message_areas(root).values())
    assert "sent-items-deleted" in second.stderr


class NeverThere:
    """sent_items() whose lookups never find the copy."""

    def __init__(self) -> None:
        self.finds = 0

    def sent_items(self, permanent: bool = True) -> NeverThere:
        return self

    def find(self, mailbox: str, message_id: str, since: float) -> list[str]:
        self.finds += 1
        return []

    def delete(self, mailbox: str, item_id: str) -> str:
        raise AssertionError("nothing may be deleted")

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> object:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


def test_a_copy_that_never_appears_is_given_up_with_one_line(tmp_path: Path) -> None:
    import logging
    import random

    from mssendmail.config import Config
    from mssendmail.delivery import cleanup
    from mssendmail.delivery.attempt import Context, Policy

    spool = make_spool(tmp_path / "queue")
    clock = [1_000_000.0]
    transport = NeverThere()
    ctx = Context(
        spool=spool,
        cfg=Config({"QUEUE_DIR": spool.root, "SENT_ITEMS": "delete", "SENT_ITEMS_DELAY": "1s"}),
        transport=transport,  # type: ignore[arg-type]
        policy=Policy(retry_min=1, retry_max=2, max_age=86400, max_attempts=None),
        now=lambda: clock[0],
        rng=random.Random(1),
    )
    qid = queue_direct(spool, ["gone-0"])[0]
    cleanup.schedule(ctx, qid, SENDER, "<gone@x.example>", clock[0])
    finished = 0
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("mssendmail.delivery.cleanup")
    logger.addHandler(handler)
    try:
        while clock[0] < 1_000_000.0 + cleanup.GIVE_UP + 3600:
            clock[0] += 60
            finished += cleanup.run_due(ctx)
    finally:
        logger.removeHandler(handler)
    assert finished == 1 and cleanup.pending(ctx) == []
    assert [line for line in lines if "sent-items-cleanup-gave-up" in line] == lines
    assert len(lines) == 1
    assert 5 <= transport.finds <= 30  # backoff, not a lookup per round
