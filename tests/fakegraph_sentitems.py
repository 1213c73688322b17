"""The fake Graph's Sent Items: copies of accepted mail, lookups and deletes.

Wired into tests.fakegraph's request handler; strict like Graph:

  GET  /v1.0/users/{mb}/mailFolders/sentitems/messages
       ?$filter=internetMessageId eq '<id>'&$select=id[,internetMessageId,...]
       [&$top=N]   needs Mail.ReadBasic.All (or Mail.ReadBasic, Mail.Read,
       Mail.ReadWrite); anything but that one filter shape, an unknown
       $option, a repeated option or an unknown property is 400 BadRequest;
       the OData string literal must double its single quotes
  GET  /v1.0/users/{mb}/messages/{id}[?$select=id]   one item (a draft of
       tests/fakegraph_large.py or a Sent Items copy), else 404
       ErrorItemNotFound; read roles as above
  DELETE /v1.0/users/{mb}/messages/{id}              a Sent Items copy moves
       to Deleted Items (204); drafts are handled by fakegraph_large
  POST /v1.0/users/{mb}/messages/{id}/permanentDelete  (no body) -> 204, the
       copy is gone; both need Mail.ReadWrite (403 ErrorAccessDenied)

Every accepted message (sendMail or a sent draft) leaves a copy in its
mailbox's Sent Items that becomes visible ``fake.sent_items_delay`` seconds
after the accept: Exchange files the copy after it processed the message,
not at the 202. ``fake.sent_items_view(mailbox)`` shows what is there now;
``fake.deletions`` records every delete (id, internetMessageId, how).

Lookup faults: ``fake.script_lookup(Fault...)`` fails the next Sent Items
or item GETs, one each (the sendMail script is not consumed by these).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from tests.fakegraph import FakeGraph, _Handler

READ_ROLES = frozenset({"Mail.ReadBasic.All", "Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"})
WRITE_ROLES = frozenset({"Mail.ReadWrite"})
SELECTABLE = frozenset(
    {"id", "internetMessageId", "subject", "sentDateTime", "createdDateTime", "parentFolderId"}
)
QUERY_OPTIONS = frozenset({"$filter", "$select", "$top"})
# Graph's grammar for this one clause: property, eq, an OData string literal.
_FILTER = re.compile(r"\AinternetMessageId eq '((?:[^']|'')*)'\Z")
MAX_TOP = 1000
SENT_FOLDERS = frozenset({"sentitems"})


@dataclass
class SentCopy:
    id: str
    mailbox: str
    internet_message_id: str
    subject: str
    accepted: float
    visible: float
    folder: str = "sentitems"  # sentitems | deleteditems

    def as_json(self, fields: list[str]) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.accepted, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        values = {
            "id": self.id,
            "internetMessageId": self.internet_message_id,
            "subject": self.subject,
            "sentDateTime": when,
            "createdDateTime": when,
            "parentFolderId": self.folder,
        }
        return {k: values[k] for k in fields}


@dataclass
class Deletion:
    id: str
    mailbox: str
    internet_message_id: str
    how: str  # delete (moved to Deleted Items) | permanentDelete


def add_copy(fake: FakeGraph, mailbox: str, message_id: str | None, subject: str | None) -> None:
    """File the Sent Items copy of an accepted message (called from FakeGraph._accept)."""
    now = time.time()
    copy = SentCopy(
        id="AAMk" + secrets.token_urlsafe(24),
        mailbox=mailbox.lower(),
        internet_message_id=(message_id or "").strip(),
        subject=subject or "",
        accepted=now,
        visible=now + fake.sent_items_delay,
    )
    with fake._lock:
        fake._sent_items.setdefault(copy.mailbox, {})[copy.id] = copy


def view(fake: FakeGraph, mailbox: str, folder: str = "sentitems") -> list[SentCopy]:
    now = time.time()
    with fake._lock:
        items = list(fake._sent_items.get(mailbox.lower(), {}).values())
    return [c for c in items if c.folder == folder and c.visible <= now]


# ---------------------------------------------------------------- routing


def is_sentitems_get(parts: list[str]) -> bool:
    return (
        len(parts) == 6
        and parts[:2] == ["v1.0", "users"]
        and parts[3] == "mailFolders"
        and parts[5] == "messages"
    )


def is_item_path(parts: list[str]) -> bool:
    return len(parts) == 5 and parts[:2] == ["v1.0", "users"] and parts[3] == "messages"


def is_permanent_delete(parts: list[str]) -> bool:
    return (
        len(parts) == 6
        and parts[:2] == ["v1.0", "users"]
        and parts[3] == "messages"
        and parts[5] == "permanentDelete"
    )


def is_copy(fake: FakeGraph, parts: list[str]) -> bool:
    """Whether a /messages/{id} path names a Sent Items copy (else: a draft)."""
    with fake._lock:
        return unquote(parts[4]) in fake._sent_items.get(unquote(parts[2]).lower(), {})


def get(h: _Handler, parts: list[str]) -> int:
    mailbox = unquote(parts[2])
    h._rec.mailbox = mailbox
    if is_sentitems_get(parts):
        return _front(h, mailbox, READ_ROLES, lambda rid: _list(h, mailbox, unquote(parts[4]), rid))
    return _front(h, mailbox, READ_ROLES, lambda rid: _item(h, mailbox, unquote(parts[4]), rid))


def delete(h: _Handler, parts: list[str], how: str) -> int:
    mailbox = unquote(parts[2])
    h._rec.mailbox = mailbox
    return _front(
        h, mailbox, WRITE_ROLES, lambda rid: _delete(h, mailbox, unquote(parts[4]), how, rid)
    )


def _front(h: _Handler, mailbox: str, roles: frozenset[str], action: Any) -> int:
    """Body, faults, token, role: the checks every endpoint here shares."""
    fake = h.server.fake
    request_id = str(uuid.uuid4())
    length = int(h.headers.get("Content-Length") or 0)
    if length > 64 * 1024:
        h._graph_error(413, "RequestEntityTooLarge", "too large", request_id, {})
        h.close_connection = True
        return 413
    body = h.rfile.read(length) if length > 0 else b""
    fake._enter(mailbox)
    try:
        fault = fake._next_fault(fake._lookup_faults)
        if fake.latency:
            fake._stopping.wait(fake.latency)
        if fault is not None:
            return int(h._fault(fault, request_id, json_error=False))
        status, code, message = _authorize(fake, h.headers.get("Authorization") or "", roles)
        if status == 0 and body:
            status, code, message = 400, "BadRequest", "this request takes no body"
        if status == 0 and fake.mailboxes is not None and mailbox.lower() not in fake.mailboxes:
            status, code, message = (
                404,
                "ErrorInvalidUser",
                f"The requested user '{mailbox}' is invalid.",
            )
        if status:
            extra = {"WWW-Authenticate": 'Bearer realm=""'} if status == 401 else {}
            h._graph_error(status, code, message, request_id, extra)
            return status
        result: int = action(request_id)
        return result
    finally:
        fake._leave(mailbox)


def _authorize(fake: FakeGraph, auth: str, roles: frozenset[str]) -> tuple[int, str, str]:
    scheme, _, token = auth.partition(" ")
    with fake._lock:
        issued = fake._tokens.get(token) if scheme == "Bearer" else None
    if issued is None or issued.expires <= time.time():
        return 401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
    if not roles.intersection(issued.roles):
        return 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
    return 0, "", ""


def _query(h: _Handler) -> tuple[dict[str, str], str]:
    """The query options, or an error text: each known option at most once."""
    raw = urlsplit(h.path).query
    try:
        parsed = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError:
        return {}, "malformed query string"
    options: dict[str, str] = {}
    for key, values in parsed.items():
        if key.startswith("$") and key not in QUERY_OPTIONS:
            return {}, f"Query option '{key}' is not allowed."
        if not key.startswith("$"):
            return {}, f"Unknown query parameter '{key}'."
        if len(values) != 1:
            return {}, f"Query option '{key}' was specified more than once."
        options[key] = values[0]
    return options, ""


def _select(options: dict[str, str]) -> tuple[list[str], str]:
    raw = options.get("$select")
    if raw is None:
        return sorted(SELECTABLE), ""
    fields = [f.strip() for f in raw.split(",")]
    for f in fields:
        if f not in SELECTABLE:
            return [], f"Could not find a property named '{f}' on type 'microsoft.graph.message'."
    return fields, ""


def _list(h: _Handler, mailbox: str, folder: str, rid: str) -> int:
    fake = h.server.fake
    if folder.lower() not in SENT_FOLDERS:
        h._graph_error(
            404, "ErrorFolderNotFound", "The specified folder could not be found.", rid, {}
        )
        return 404
    options, problem = _query(h)
    fields, select_problem = _select(options) if not problem else ([], "")
    problem = problem or select_problem
    wanted: str | None = None
    if not problem and "$filter" in options:
        match = _FILTER.match(options["$filter"])
        if match is None:
            problem = "Invalid filter clause: only internetMessageId eq '...' is supported here."
        else:
            wanted = match.group(1).replace("''", "'")
    top = 10
    if not problem and "$top" in options:
        text = options["$top"]
        if not text.isdigit() or not 0 < int(text) <= MAX_TOP:
            problem = f"Invalid $top value '{text}'."
        else:
            top = int(text)
    if problem:
        h._graph_error(400, "BadRequest", problem, rid, {})
        return 400
    with fake._lock:
        fake.lookups += 1
    items = [c for c in view(fake, mailbox) if wanted is None or c.internet_message_id == wanted]
    items.sort(key=lambda c: c.accepted)
    context = f"users('{mailbox}')/mailFolders('sentitems')/messages"
    doc = {
        "@odata.context": f"{fake.url}/v1.0/$metadata#{context}",
        "value": [c.as_json(fields) for c in items[:top]],
    }
    h._json(200, doc, {"request-id": rid})
    return 200


def _item(h: _Handler, mailbox: str, item_id: str, rid: str) -> int:
    from tests.fakegraph_large import large_state

    fake = h.server.fake
    options, problem = _query(h)
    fields, select_problem = _select(options) if not problem else ([], "")
    if problem or select_problem or set(options) - {"$select"}:
        h._graph_error(400, "BadRequest", problem or select_problem or "bad query", rid, {})
        return 400
    state = large_state(fake)
    with fake._lock:
        draft = state.drafts.get(item_id)
        copy = fake._sent_items.get(mailbox.lower(), {}).get(item_id)
    if draft is not None and draft.mailbox.lower() == mailbox.lower():
        h._json(
            200, {"id": draft.id, "parentFolderId": "drafts"} if fields else {}, {"request-id": rid}
        )
        return 200
    if copy is not None and copy.visible <= time.time():
        h._json(200, copy.as_json(fields), {"request-id": rid})
        return 200
    h._graph_error(
        404, "ErrorItemNotFound", "The specified object was not found in the store.", rid, {}
    )
    return 404


def _delete(h: _Handler, mailbox: str, item_id: str, how: str, rid: str) -> int:
    fake = h.server.fake
    with fake._lock:
        items = fake._sent_items.get(mailbox.lower(), {})
        copy = items.get(item_id)
        gone = (
            copy is None
            or copy.visible > time.time()
            or (how == "delete" and copy.folder != "sentitems")
        )
        if not gone and copy is not None:
            if how == "permanentDelete":
                del items[item_id]
            else:
                copy.folder = "deleteditems"
            fake.deletions.append(Deletion(copy.id, mailbox.lower(), copy.internet_message_id, how))
    if gone:
        h._graph_error(
            404, "ErrorItemNotFound", "The specified object was not found in the store.", rid, {}
        )
        return 404
    h._reply(204, b"", {"request-id": rid})
    return 204
