"""Fair share between submitting users (issue 12, finding 5)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mssendmail.config import Config
from mssendmail.delivery.attempt import Context, RetryPolicy
from mssendmail.delivery.fairness import FairQueue, interleave
from mssendmail.delivery.worker import Worker
from mssendmail.errors import SpoolError
from mssendmail.spool.layout import MAILDROP, OVER_CAP_FILE, Spool
from mssendmail.submission.writer import Submission, check_quota, make_envelope
from mssendmail.transport import Delivered

OTHER_UID = 54321  # a submitter that is not us: pickup trusts the file's owner


class Recording:
    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        with self.lock:
            self.order.append(queue_id)
        return Delivered(202, "r")

    def close(self) -> None:
        pass


def submit(spool: Spool, owner: int | None = None) -> str:
    with Submission(spool, 1 << 20) as sub:
        sub.write(b"Subject: s\n\nx\n")
        qid = sub.commit(make_envelope("a@example.com", ["b@example.com"]))
    if owner is not None:
        os.chown(spool.path(MAILDROP, qid), owner, -1)
    return qid


def worker(spool: Spool, transport: Recording, **cfg: str) -> Worker:
    ctx = Context(
        spool=spool,
        cfg=Config({"SENDER": "relay@example.com", "QUEUE_DIR": spool.root, **cfg}),
        transport=transport,
        policy=RetryPolicy(retry_min=60, retry_max=3600, max_age=86400, max_attempts=None),
    )
    return Worker(ctx, concurrency=1, once=True)


def test_interleave_and_fair_queue_go_round_robin() -> None:
    assert list(interleave([["a1", "a2", "a3"], ["b1"], [], ["c1", "c2"]])) == [
        "a1",
        "b1",
        "c1",
        "a2",
        "c2",
        "a3",
    ]
    q = FairQueue()
    for n in range(3):
        q.append((f"a{n}", "queue"), 1)
    q.append(("b0", "queue"), 2)
    assert [q.popleft()[0] for _ in range(len(q))] == ["a0", "b0", "a1", "a2"]
    assert not q


@pytest.mark.slow  # a 2,000-message flood: a reliability suite, run once in CI
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_one_users_flood_delays_another_user_by_at_most_a_few_sends(spool: Spool) -> None:
    for _ in range(2000):
        submit(spool)  # ours: the flood, older than the victim's message
    victim = submit(spool, owner=OTHER_UID)
    transport = Recording()
    assert worker(spool, transport).run_once() == 0
    assert len(transport.order) == 2001
    assert transport.order.index(victim) < 5, transport.order.index(victim)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_max_queued_per_user_holds_the_rest_in_maildrop_and_tells_submission(
    spool: Spool,
) -> None:
    for _ in range(12):
        submit(spool, owner=OTHER_UID)
    w = worker(spool, Recording(), MAX_QUEUED_PER_USER="5")
    w.backlog.extend(w.fair_listing())
    assert len(w.backlog) == 5  # the other 7 wait in maildrop/
    listed = Path(spool.root, OVER_CAP_FILE).read_text().split()
    assert listed == [str(OTHER_UID)]
    with pytest.raises(SpoolError, match="MAX_QUEUED_PER_USER"):
        check_quota(spool, OTHER_UID)
    check_quota(spool, OTHER_UID + 1)  # others are not affected


def test_no_cap_file_means_no_quota(spool: Spool) -> None:
    check_quota(spool, os.getuid())
