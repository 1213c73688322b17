"""Claims: one holder per message; dead holders are recovered."""

from __future__ import annotations

import os
import subprocess
import sys

from mssendmail.delivery.pickup import pickup
from mssendmail.spool.claim import claim, lock, recover
from mssendmail.spool.layout import ACTIVE, QUEUE, Spool
from mssendmail.submission.writer import Submission, make_envelope


def queued(spool: Spool) -> str:
    with Submission(spool, 1 << 20) as sub:
        sub.write(b"Subject: x\n\nbody\n")
        qid = sub.commit(make_envelope("", ["a@example.com"]))
    pickup(spool, 1 << 20)
    return qid


def test_claim_moves_to_active_and_blocks_a_second_claim(spool: Spool) -> None:
    qid = queued(spool)
    first = claim(spool, qid, QUEUE)
    assert first is not None and first.area == ACTIVE
    assert spool.ids(ACTIVE) == [qid]
    assert claim(spool, qid, QUEUE) is None
    assert claim(spool, qid, ACTIVE) is None
    assert lock(spool, qid, ACTIVE) is None
    first.release()


def test_recover_skips_live_claims(spool: Spool) -> None:
    qid = queued(spool)
    held = claim(spool, qid, QUEUE)
    assert held is not None
    assert recover(spool) == []
    assert spool.ids(ACTIVE) == [qid]
    held.release()


def test_recover_returns_claims_of_dead_processes(spool: Spool) -> None:
    qid = queued(spool)
    code = (
        "import os,sys; from mssendmail.spool.layout import Spool;"
        " from mssendmail.spool.claim import claim;"
        f"c = claim(Spool({spool.root!r}), {qid!r}, 'queue'); assert c; os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert spool.ids(ACTIVE) == [qid]
    assert recover(spool) == [qid]
    assert spool.ids(QUEUE) == [qid]
    assert os.listdir(spool.dir(ACTIVE)) == []


def test_claim_of_missing_message_is_none(spool: Spool) -> None:
    assert claim(spool, "0" * 18, QUEUE) is None
