"""Sent Items: did a message go out, and removing the copy Graph keeps.

Job: three small Graph calls for mssendmail.delivery.idempotency and
mssendmail.delivery.cleanup, through a GraphTransport's session and tokens:

* ``find(mailbox, message_id, since)``: GET
  /users/{mailbox}/mailFolders/sentitems/messages?$filter=internetMessageId
  eq '<id>'&$select=id,sentDateTime. Needs Mail.ReadBasic.All (no bodies
  are read; Mail.Read or Mail.ReadWrite also do). Only copies sent at or
  after ``since`` (minus CLOCK_SKEW) count: a Message-ID a client reused
  for an older, different message must not make this one "sent".
* ``draft_exists(mailbox, draft_id)``: GET /users/{mailbox}/messages/{id}
  for the large-message path: after an unknown /send, a draft that still
  exists was not sent, a draft that is gone was.
* ``delete(mailbox, item_id)``: POST .../messages/{id}/permanentDelete
  (Graph v1.0; global cloud only, per Microsoft's page for the API),
  else DELETE .../messages/{id}, which moves the item to Deleted Items
  (all clouds). Both need Mail.ReadWrite.

A 403 raises LookupDenied: the permission is missing, and the caller falls
back to what it did without it. Other failures are the usual delivery
errors (TemporaryFailure and friends).

SECURITY: the Message-ID comes from a submitted message. It is used only
inside an OData string literal (single quotes doubled) that is then
percent-encoded as one query value, and one longer than MAX_MESSAGE_ID or
holding control characters is never looked up.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from mssendmail.errors import DeliveryError, TemporaryFailure
from mssendmail.graph.classify import graph_error

if TYPE_CHECKING:
    from mssendmail.graph.transport import GraphTransport

log = logging.getLogger("mssendmail.graph.sentitems")

MAX_MESSAGE_ID = 900
# Exchange stamps sentDateTime with its clock, we compare with ours.
CLOCK_SKEW = 300.0
PAGE = 50  # copies of one Message-ID: more than a few is already odd


class LookupDenied(DeliveryError):
    """Graph answered 403: the app lacks the read (or write) permission for this call."""


def usable_message_id(message_id: str) -> bool:
    return (
        0 < len(message_id) <= MAX_MESSAGE_ID
        and message_id.isprintable()
        and message_id.startswith("<")
        and message_id.endswith(">")
    )


def odata_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class SentItems:
    """The Sent Items calls for one GraphTransport; safe for concurrent use."""

    def __init__(self, transport: GraphTransport, permanent: bool = True) -> None:
        self.t = transport
        self.permanent = permanent

    def _users(self, mailbox: str) -> str:
        return f"{self.t.graph_url}/v1.0/users/{quote(mailbox, safe='@')}"

    def _call(self, method: str, url: str, mailbox: str) -> tuple[int, bytes]:
        from mssendmail.graph.large import LargeSender

        response = LargeSender(self.t, mailbox, "")._graph(method, url)
        if response.status_code == 403:
            code, message, request_id = graph_error(response.content)
            raise LookupDenied(
                f"Graph HTTP 403 {code or ''} for {method} on mailbox {mailbox}: {message}",
                status=403,
                code=code,
                request_id=request_id,
            )
        return response.status_code, response.content

    def _fail(self, status: int, body: bytes, what: str, mailbox: str) -> DeliveryError:
        from mssendmail.graph.classify import classify_http

        exc = classify_http(status, body, {}, mailbox=mailbox)
        exc.args = (f"{what}: {exc}",)
        return exc

    def find(self, mailbox: str, message_id: str, since: float) -> list[str]:
        """Ids of the Sent Items copies of message_id sent at or after since."""
        import json

        if not usable_message_id(message_id):
            raise TemporaryFailure(f"message id {message_id[:60]!r} cannot be looked up")
        query = (
            "$filter="
            + quote(f"internetMessageId eq {odata_literal(message_id)}", safe="")
            + f"&$select=id,sentDateTime&$top={PAGE}"
        )
        url = f"{self._users(mailbox)}/mailFolders/sentitems/messages?{query}"
        status, body = self._call("GET", url, mailbox)
        if status != 200:
            raise self._fail(status, body, "the Sent Items lookup failed", mailbox)
        try:
            doc = json.loads(body)
        except ValueError:
            raise TemporaryFailure("the Sent Items lookup returned no JSON") from None
        values = doc.get("value") if isinstance(doc, dict) else None
        if not isinstance(values, list):
            raise TemporaryFailure("the Sent Items lookup returned no value list")
        found = []
        for item in values:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            sent = _parse_time(item.get("sentDateTime"))
            if sent is None or sent >= since - CLOCK_SKEW:
                found.append(str(item["id"]))
        return found

    def draft_exists(self, mailbox: str, draft_id: str) -> bool:
        url = f"{self._users(mailbox)}/messages/{quote(draft_id, safe='=-_')}?$select=id"
        status, body = self._call("GET", url, mailbox)
        if status == 200:
            return True
        if status == 404:
            return False
        raise self._fail(status, body, "checking the draft failed", mailbox)

    def delete_draft(self, mailbox: str, draft_id: str) -> None:
        """DELETE a draft that was not sent (large.py deletes its drafts the same way)."""
        url = f"{self._users(mailbox)}/messages/{quote(draft_id, safe='=-_')}"
        status, body = self._call("DELETE", url, mailbox)
        if status not in (200, 202, 204, 404):
            raise self._fail(status, body, "deleting the unsent draft failed", mailbox)

    def delete(self, mailbox: str, item_id: str) -> str:
        """Delete one copy; how it went ("permanentDelete", "moved", "gone")."""
        url = f"{self._users(mailbox)}/messages/{quote(item_id, safe='=-_')}"
        if self.permanent:
            status, body = self._call("POST", url + "/permanentDelete", mailbox)
            how = "permanentDelete"
        else:
            status, body = self._call("DELETE", url, mailbox)
            how = "moved"
        if status in (200, 204):
            return how
        if status == 404:
            return "gone"
        raise self._fail(status, body, "deleting the Sent Items copy failed", mailbox)
