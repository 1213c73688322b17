"""ALLOWED_FROM_USERS with two real unprivileged users and the worker as mssendmail (root only).

mssendmail-t1 owns t1@example.org; mssendmail-t2 writes the same From: and
its mail goes out as SENDER, with the address as Reply-To. The worker knows
who is who only from the uid pickup reads with fstat. See
tests/test_multiuser.py for the users and tests/test_multiuser_availability.py
for the spool, the config and the worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.test_multiuser import as_user, sendmail_cmd
from tests.test_multiuser_availability import worker_cmd, world

pytestmark = pytest.mark.root
__all__ = ["world"]  # the fixture, used by name


def submit_from(world: dict[str, Any], who: str, address: str) -> None:
    message = f"From: {who} <{address}>\nTo: bob@example.com\nSubject: from {who}\n\n{who}\n"
    proc = as_user(
        world[who], [*sendmail_cmd(world["python"]), "-t"], world["env"], message.encode()
    )
    assert proc.returncode == 0, proc.stderr


def test_only_the_owner_may_send_as_a_reserved_address(world: dict[str, Any]) -> None:
    cfg = Path(world["env"]["MSSENDMAIL_CONFIG"])
    cfg.write_text(
        cfg.read_text() + "ALLOWED_FROM=@example.org\n"
        "ALLOWED_FROM_USERS=mssendmail-t1:t1@example.org\n"
    )
    submit_from(world, "t1", "t1@example.org")
    submit_from(world, "t2", "t1@example.org")  # the same From, another uid
    submit_from(world, "t2", "t2@example.org")  # not reserved: ALLOWED_FROM, as before
    proc = as_user(world["service"], worker_cmd(world, "--once"), world["env"])
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(world["outbox"])) == 3
    heads = [Path(world["outbox"], n).read_bytes() for n in os.listdir(world["outbox"])]
    mailboxes = sorted(
        (h.split(b"\r\n", 1)[0].decode(), b"Reply-To: " in h.split(b"\r\n\r\n", 1)[0])
        for h in heads
    )
    assert mailboxes == [
        ("X-Mssendmail-Mailbox: relay@example.com", True),  # t2 as t1: rewritten
        ("X-Mssendmail-Mailbox: t1@example.org", False),
        ("X-Mssendmail-Mailbox: t2@example.org", False),
    ], mailboxes
    log = proc.stderr.decode()
    assert "reserved to mssendmail-t1" in log and "not to uid" in log, log
