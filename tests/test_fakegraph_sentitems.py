"""The fake's Sent Items, per-endpoint roles and accept-then-fail faults."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.fakegraph import FakeGraph, Fault, running
from tests.test_fakegraph import MAILBOX, get_token

MID = "<abc+1/x'y@example.com>"


def mime(subject: str = "hi", message_id: str = MID) -> bytes:
    return (
        f"From: a@example.com\r\nTo: ops@example.com, b@example.com\r\n"
        f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n\r\nbody\r\n"
    ).encode()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with running(
        tmp_path / "fake", monkeypatch, roles=["Mail.Send", "Mail.ReadBasic.All", "Mail.ReadWrite"]
    ) as server:
        yield server


def token_for(fake: FakeGraph, roles: list[str]) -> str:
    fake.roles = roles
    return str(get_token(fake).json()["access_token"])


def send(fake: FakeGraph, token: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{fake.url}/v1.0/users/{MAILBOX}/sendMail",
        data=base64.b64encode(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        timeout=5,
    )


def odata(message_id: str) -> str:
    return "internetMessageId eq '" + message_id.replace("'", "''") + "'"


def lookup(fake: FakeGraph, token: str, query: str) -> requests.Response:
    url = f"{fake.url}/v1.0/users/{MAILBOX}/mailFolders/sentitems/messages?{query}"
    return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def by_id(message_id: str, select: str = "id") -> str:
    return f"$filter={quote(odata(message_id), safe='')}&$select={select}"


def test_copy_appears_after_the_delay_and_the_filter_finds_it(fake: FakeGraph) -> None:
    fake.sent_items_delay = 0.5
    token = token_for(fake, ["Mail.Send", "Mail.ReadBasic.All"])
    assert send(fake, token, mime()).status_code == 202
    assert send(fake, token, mime("other", "<other@example.com>")).status_code == 202
    early = lookup(fake, token, by_id(MID))
    assert early.status_code == 200 and early.json()["value"] == []
    time.sleep(0.6)
    found = lookup(fake, token, by_id(MID))
    assert found.status_code == 200
    assert [set(v) for v in found.json()["value"]] == [{"id"}]
    both = lookup(fake, token, by_id(MID, "id,internetMessageId,subject"))
    assert [v["internetMessageId"] for v in both.json()["value"]] == [MID]
    assert fake.recipients_24h(MAILBOX) == 4


@pytest.mark.parametrize(
    "query",
    [
        "$filter=" + quote("internetMessageId eq '<a@b>' or 1 eq 1", safe=""),
        "$filter=" + quote("internetMessageId eq <a@b>", safe=""),
        "$filter=" + quote("internetMessageId eq 'it's'", safe=""),
        "$filter=" + quote("InternetMessageId eq '<a@b>'", safe=""),
        "$filter=" + quote("internetMessageId eq '<a@b>'", safe="") + "&$select=body",
        "$filter=" + quote("internetMessageId eq '<a@b>'", safe="") + "&$expand=attachments",
        "$filter=" + quote("internetMessageId eq '<a@b>'", safe="") + "&$select=id&$select=id",
        "filter=" + quote("internetMessageId eq '<a@b>'", safe=""),
        "$top=0",
    ],
)
def test_odata_is_strict(fake: FakeGraph, query: str) -> None:
    token = token_for(fake, ["Mail.ReadBasic.All"])
    reply = lookup(fake, token, query)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "BadRequest"


def test_roles_are_enforced_per_endpoint(fake: FakeGraph) -> None:
    sender = token_for(fake, ["Mail.Send"])
    assert send(fake, sender, mime()).status_code == 202
    denied = lookup(fake, sender, by_id(MID))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    reader = token_for(fake, ["Mail.ReadBasic.All"])
    assert send(fake, reader, mime()).status_code == 403
    item = lookup(fake, reader, by_id(MID)).json()["value"][0]["id"]
    url = f"{fake.url}/v1.0/users/{MAILBOX}/messages/{item}"
    auth = {"Authorization": f"Bearer {reader}"}
    assert requests.get(url + "?$select=id", headers=auth, timeout=5).status_code == 200
    assert requests.delete(url, headers=auth, timeout=5).status_code == 403
    assert requests.post(url + "/permanentDelete", headers=auth, timeout=5).status_code == 403
    assert fake.deletions == []


def test_delete_moves_and_permanent_delete_removes(fake: FakeGraph) -> None:
    token = token_for(fake, ["Mail.Send", "Mail.ReadWrite"])
    send(fake, token, mime("one", "<one@x.example>"))
    send(fake, token, mime("two", "<two@x.example>"))
    ids = {c.internet_message_id: c.id for c in fake.sent_items_view(MAILBOX)}
    auth = {"Authorization": f"Bearer {token}"}
    base = f"{fake.url}/v1.0/users/{MAILBOX}/messages"
    assert (
        requests.delete(f"{base}/{ids['<one@x.example>']}", headers=auth, timeout=5).status_code
        == 204
    )
    reply = requests.post(
        f"{base}/{ids['<two@x.example>']}/permanentDelete", headers=auth, timeout=5
    )
    assert reply.status_code == 204
    assert fake.sent_items_view(MAILBOX) == []
    assert [c.internet_message_id for c in fake.sent_items_view(MAILBOX, "deleteditems")] == [
        "<one@x.example>"
    ]
    assert [(d.internet_message_id, d.how) for d in fake.deletions] == [
        ("<one@x.example>", "delete"),
        ("<two@x.example>", "permanentDelete"),
    ]
    again = requests.post(
        f"{base}/{ids['<two@x.example>']}/permanentDelete", headers=auth, timeout=5
    )
    assert again.status_code == 404
    with_body = requests.post(
        f"{base}/{ids['<one@x.example>']}/permanentDelete", data=b"x", headers=auth, timeout=5
    )
    assert with_body.status_code in (400, 404)


@pytest.mark.parametrize(
    "fault", [Fault.error(504, accept=True), Fault.reset(accept=True), Fault.hang(2, accept=True)]
)
def test_accept_then_fail_keeps_the_message(fake: FakeGraph, fault: Fault) -> None:
    token = token_for(fake, ["Mail.Send", "Mail.ReadBasic.All"])
    fake.script(fault)
    try:
        reply = requests.post(
            f"{fake.url}/v1.0/users/{MAILBOX}/sendMail",
            data=base64.b64encode(mime()),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            timeout=1,
        )
        status = reply.status_code
    except requests.RequestException:
        status = 0
    assert status == (504 if fault.kind == "error" else 0)
    assert fake.accepted == 1
    assert len(lookup(fake, token, by_id(MID)).json()["value"]) == 1


def test_a_plain_fault_does_not_accept(fake: FakeGraph) -> None:
    token = token_for(fake, ["Mail.Send"])
    fake.script(Fault.error(504))
    assert send(fake, token, mime()).status_code == 504
    assert fake.accepted == 0 and fake.sent_items_view(MAILBOX) == []


def test_plan_faults_the_first_send_of_a_subject_only(fake: FakeGraph) -> None:
    token = token_for(fake, ["Mail.Send"])
    fake.plan({"m1": Fault.error(504, accept=True)})
    assert send(fake, token, mime("m0", "<0@x.example>")).status_code == 202
    assert send(fake, token, mime("m1", "<1@x.example>")).status_code == 504
    assert send(fake, token, mime("m1", "<1@x.example>")).status_code == 202
    assert [m.subject for m in fake.messages] == ["m0", "m1", "m1"]


def test_lookup_faults_are_their_own_script(fake: FakeGraph) -> None:
    token = token_for(fake, ["Mail.Send", "Mail.ReadBasic.All"])
    fake.script_lookup(Fault.error(503))
    assert lookup(fake, token, by_id(MID)).status_code == 503
    assert send(fake, token, mime()).status_code == 202
    assert lookup(fake, token, by_id(MID)).status_code == 200
