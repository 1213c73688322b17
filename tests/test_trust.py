"""ALLOWED_FROM_USERS: which local users may send as which From (issue 12, item 8).

The submitter is the envelope's uid (pickup wrote it from fstat); these tests
use root and the first other account of this host, and its primary group.
"""

from __future__ import annotations

import grp
import pwd
from typing import Any

import pytest

from mssendmail.admin import checks
from mssendmail.config import Config
from mssendmail.delivery import trust
from mssendmail.delivery.prepare import SenderPolicy, prepare
from mssendmail.errors import ConfigError

SENDER = "relay@example.com"
# A real account that is not root (root may use every allowed address).
ACCOUNT = next(p for p in sorted(pwd.getpwall(), key=lambda p: p.pw_uid) if p.pw_uid > 0)
ME, MY_UID = ACCOUNT.pw_name, ACCOUNT.pw_uid
MY_GROUP = grp.getgrgid(ACCOUNT.pw_gid).gr_name
OTHER_UID = 4242424  # nobody's
SERVICE_UID = 4242425  # stands for the mssendmail user


def policy(**keys: str) -> SenderPolicy:
    cfg = Config({"SENDER": SENDER, **keys})
    return SenderPolicy(
        SENDER,
        SenderPolicy.from_config(cfg).resolver,
        allowed_from=cfg.addresses("ALLOWED_FROM"),
        allowed_users=cfg.get("ALLOWED_FROM_USERS"),
        service_uid=SERVICE_UID,
    )


def envelope(uid: int | None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"sender": "", "recipients": ["bob@example.org"], "time": 1.7e9}
    if uid is not None:
        env["uid"] = uid
    return {**env, **extra}


def sent_as(pol: SenderPolicy, from_: str, env: dict[str, Any]) -> tuple[str, bytes]:
    message = f"From: Someone <{from_}>\nTo: bob@example.org\n\nhi\n".encode()
    prepared = prepare(message, env, pol, "0123456789abcdef01")
    return prepared.mailbox, prepared.mime.split(b"\r\n\r\n", 1)[0]


def test_a_listed_user_may_use_its_address_and_another_may_not() -> None:
    pol = policy(ALLOWED_FROM_USERS=f"{ME}:me@example.org")
    assert sent_as(pol, "me@example.org", envelope(MY_UID))[0] == "me@example.org"
    mailbox, head = sent_as(pol, "me@example.org", envelope(OTHER_UID))
    assert mailbox == SENDER  # rewritten, as for ALLOWED_FROM: not refused
    assert b'Reply-To: "Someone" <me@example.org>' in head
    prepared = prepare(
        b"From: me@example.org\nTo: bob@example.org\n\nhi\n", envelope(OTHER_UID), pol, "x"
    )
    assert any("reserved to" in w and ME in w for w in prepared.warnings), prepared.warnings


def test_a_reservation_beats_allowed_from_and_exact_beats_domain() -> None:
    pol = policy(
        ALLOWED_FROM="@example.org",
        ALLOWED_FROM_USERS=f"{ME}:ceo@example.org; 4242000:@ops.example.org",
    )
    other, me = envelope(OTHER_UID), envelope(MY_UID)
    assert (
        sent_as(pol, "anyone@example.org", other)[0] == "anyone@example.org"
    )  # unlisted: as before
    assert sent_as(pol, "ceo@example.org", other)[0] == SENDER  # reserved to ME
    assert sent_as(pol, "ceo@example.org", me)[0] == "ceo@example.org"
    assert sent_as(pol, "x@ops.example.org", me)[0] == SENDER  # reserved to uid 4242000
    assert sent_as(pol, "x@ops.example.org", envelope(4242000))[0] == "x@ops.example.org"
    both = policy(ALLOWED_FROM_USERS=f"4242000:@example.org;{ME}:ceo@example.org")
    assert sent_as(both, "ceo@example.org", envelope(4242000))[0] == SENDER  # the exact entry wins
    assert sent_as(both, "cfo@example.org", envelope(4242000))[0] == "cfo@example.org"


def test_groups_root_and_unknown_uids() -> None:
    pol = policy(ALLOWED_FROM_USERS=f"@{MY_GROUP}:team@example.org")
    assert sent_as(pol, "team@example.org", envelope(MY_UID))[0] == "team@example.org"
    assert sent_as(pol, "team@example.org", envelope(OTHER_UID))[0] == SENDER
    assert sent_as(pol, "team@example.org", envelope(0))[0] == "team@example.org"  # root
    assert sent_as(pol, "team@example.org", envelope(None))[0] == SENDER
    assert sent_as(pol, "team@example.org", envelope(True))[0] == SENDER  # type: ignore[arg-type]
    assert sent_as(pol, "other@example.org", envelope(0))[0] == SENDER  # root: only what is allowed


def test_smtp_user_counts_only_for_mail_queued_by_the_service_user() -> None:
    pol = policy(ALLOWED_FROM_USERS="dev:dev@example.org; mssendmail:app@example.org")
    smtp = envelope(SERVICE_UID, smtp_user="dev")
    assert sent_as(pol, "dev@example.org", smtp)[0] == "dev@example.org"
    forged = envelope(OTHER_UID, smtp_user="dev")  # a local user wrote smtp_user itself
    assert sent_as(pol, "dev@example.org", forged)[0] == SENDER
    bad = envelope(SERVICE_UID, smtp_user="dev\nx")
    assert sent_as(pol, "dev@example.org", bad)[0] == SENDER
    who = trust.submitter(envelope(SERVICE_UID), SERVICE_UID)
    assert who.service and who.smtp_user is None and not who.root


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("alice", "is not user:address"),
        ("alice:", "lists no address"),
        ("alice:bob", "neither an address nor @domain"),
        ("alice:a@x.org,bob:b@x.org", "neither an address"),  # a missing ";"
        ("al ice:a@x.org", "is not user:address"),
        ("@:a@x.org", "is not user:address"),
    ],
)
def test_a_malformed_entry_is_a_config_error(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(ALLOWED_FROM_USERS=value)
    assert words in str(caught.value) and "ALLOWED_FROM_USERS" in str(caught.value)
    result = checks.check_allowed_from(Config({"SENDER": SENDER, "ALLOWED_FROM_USERS": value}))
    assert result.status == checks.FAIL and words in result.detail


def test_entries_merge_and_whitespace_is_ignored() -> None:
    rules = trust.parse_users(" alice : a@x.org ; alice:B@X.org,@y.org ;; @ops:@ops.x.org ")
    assert [(r.who, r.grants.shown()) for r in rules] == [
        ("alice", ["a@x.org", "b@x.org", "@y.org"]),
        ("@ops", ["@ops.x.org"]),
    ]


def test_check_shows_who_can_send_as_what() -> None:
    cfg = Config(
        {
            "SENDER": SENDER,
            "ALLOWED_FROM": "alerts@example.org",
            "ALLOWED_FROM_USERS": f"{ME}:me@example.org;@{MY_GROUP}:@team.example.org",
        }
    )
    result = checks.check_allowed_from(cfg)
    assert result.status == checks.PASS, result.detail
    flat = " ".join(result.detail.split())
    assert f"every local user may send as {SENDER}, alerts@example.org" in flat
    assert f"{ME}: me@example.org" in flat and f"group {MY_GROUP}: @team.example.org" in flat
    assert "root may use all of these" in flat
    typo = checks.check_allowed_from(
        Config({"SENDER": SENDER, "ALLOWED_FROM_USERS": "no-such-user-xq:a@x.org"})
    )
    assert typo.status == checks.WARN and "no-such-user-xq" in typo.detail
