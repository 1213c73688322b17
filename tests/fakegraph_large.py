"""The fake Graph's large-message endpoints: drafts, attachments, upload sessions.

Wired into tests.fakegraph's request handler; strict like Graph, and
stricter where a client bug would otherwise pass unnoticed:

  POST   /v1.0/users/{mb}/messages          draft from base64 MIME (text/plain,
         <= 4 MiB body) -> 201 {"id"}; needs the Mail.ReadWrite role
         (403 ErrorAccessDenied without it: the "missing Mail.ReadWrite" mode)
  POST   .../messages/{id}/attachments      #microsoft.graph.fileAttachment JSON
         with contentBytes (<= 4 MiB body) -> 201
  POST   .../messages/{id}/attachments/createUploadSession
         {"AttachmentItem": {attachmentType: file, name, size, contentType,
         isInline, contentId}} -> 201 {"uploadUrl": URL on this server}
  PUT    /_upload/{session}?authtoken=...   a byte range; refused (401) if it
         carries an Authorization header; Content-Range must be
         "bytes a-b/total", total the announced size, a the next expected
         byte (416 otherwise), Content-Length b-a+1, at most 4 MiB, and every
         chunk but the last a multiple of 320 KiB (400 otherwise);
         200 {"nextExpectedRanges": ["N"]} or, at the end, 201 + Location
  GET    /_upload/{session}?authtoken=...   the session's nextExpectedRanges
  POST   .../messages/{id}/send             (Content-Length 0) -> 202; refused
         while an upload session is unfinished; recipients checked like
         sendMail; the sent message (draft MIME + every attachment's name,
         type, size, sha256, inline flag, contentId) goes to
         ``large_state(fake).sent`` and, with --out-dir, to large.jsonl
  DELETE .../messages/{id}                  -> 204

Scripted Graph faults (fake.script) apply to these requests too, except the
PUTs, which have their own: ``large_state(fake).fail_put(n, UploadFault...)``
fires on the n-th PUT from now (1 = the next one).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import inspect
import json
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from tests.fakegraph import FakeGraph, _Handler

MAX_BODY = 4 * 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
CHUNK_UNIT = 320 * 1024
MAX_ATTACHMENT = 150 * 1024 * 1024
READWRITE = "Mail.ReadWrite"
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class StoredAttachment:
    name: str
    content_type: str | None
    size: int
    sha256: str
    is_inline: bool
    content_id: str | None
    via: str  # post | upload


@dataclass
class Draft:
    id: str
    mailbox: str
    mime: bytes
    attachments: list[StoredAttachment] = field(default_factory=list)
    open_sessions: int = 0


@dataclass
class Session:
    id: str
    auth: str
    draft_id: str
    mailbox: str
    item: dict[str, Any]
    size: int
    next: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    done: bool = False


@dataclass
class PutRecord:
    session: str
    start: int
    length: int
    total: int
    status: int
    authorization: bool


@dataclass
class LargeSent:
    mailbox: str
    draft_id: str
    mime: bytes
    attachments: list[StoredAttachment]
    request_id: str
    recipients: list[str]


@dataclass
class UploadFault:
    """What a PUT does instead of succeeding; ``keep`` bytes are stored first."""

    kind: str  # reset | error
    status: int = 503
    keep: int = 0

    @classmethod
    def reset(cls, keep: int = 0) -> UploadFault:
        return cls("reset", keep=keep)

    @classmethod
    def error(cls, status: int = 503, keep: int = 0) -> UploadFault:
        return cls("error", status=status, keep=keep)


@dataclass
class LargeState:
    require_readwrite: bool = True
    max_message: int = 150 * 1024 * 1024
    drafts: dict[str, Draft] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    sent: list[LargeSent] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    puts: list[PutRecord] = field(default_factory=list)
    put_count: int = 0
    put_faults: dict[int, UploadFault] = field(default_factory=dict)
    status_gets: int = 0

    def fail_put(self, n: int, fault: UploadFault) -> None:
        """Make the n-th PUT from now (1 = next) fail with fault."""
        self.put_faults[self.put_count + n] = fault


# Graph's own address reading is unknown and lenient; the fake stands in with
# email.utils in its non-strict mode, chosen on purpose: it is the one mode
# every supported Python has (strict= came with 3.13, later security releases
# of 3.9-3.12 and distribution backports such as Debian 12's 3.11.2), so the
# fake answers alike everywhere.
_NON_STRICT = {"strict": False} if "strict" in inspect.signature(getaddresses).parameters else {}


def recipients(fields: list[str]) -> list[str]:
    """The addresses of To/Cc/Bcc field values, as the fake Graph delivers to them."""
    return [addr for _, addr in getaddresses(fields, **_NON_STRICT) if addr]


def large_state(fake: FakeGraph) -> LargeState:
    with fake._lock:
        state: LargeState | None = getattr(fake, "_large", None)
        if state is None:
            state = LargeState()
            fake._large = state  # type: ignore[attr-defined]
        return state


# ---------------------------------------------------------------- routing


def is_large_path(parts: list[str]) -> bool:
    """POST/DELETE paths under /v1.0/users/{mb}/messages handled here."""
    return len(parts) >= 4 and parts[:2] == ["v1.0", "users"] and parts[3] == "messages"


def post(h: _Handler, parts: list[str]) -> int:
    mailbox = unquote(parts[2])
    h._rec.mailbox = mailbox
    rest = [unquote(p) for p in parts[4:]]
    if rest == []:
        return _graph(h, mailbox, _create_draft, None, max_body=MAX_BODY)
    if len(rest) == 2 and rest[1] == "attachments":
        return _graph(h, mailbox, _add_attachment, rest[0], max_body=MAX_BODY)
    if len(rest) == 3 and rest[1:] == ["attachments", "createUploadSession"]:
        return _graph(h, mailbox, _create_session, rest[0], max_body=64 * 1024)
    if len(rest) == 2 and rest[1] == "send":
        return _graph(h, mailbox, _send, rest[0], max_body=64 * 1024)
    return _not_found(h)


def delete(h: _Handler) -> None:
    path = urlsplit(h.path).path
    parts = path.strip("/").split("/")
    h._start("DELETE", path)
    if is_large_path(parts) and len(parts) == 5:
        mailbox = unquote(parts[2])
        h._rec.mailbox = mailbox
        status = _graph(h, mailbox, _delete, unquote(parts[4]), max_body=0)
    else:
        status = _not_found(h)
    h._log(status)


def is_upload_path(path: str) -> bool:
    return path.startswith("/_upload/")


def _not_found(h: _Handler) -> int:
    h._body()
    h._graph_error(404, "BadRequest", "unsupported path", str(uuid.uuid4()), {})
    return 404


def _graph(
    h: _Handler,
    mailbox: str,
    action: Any,
    draft_id: str | None,
    *,
    max_body: int,
) -> int:
    """Front door shared by the Graph endpoints: size, faults, token, role, mailbox."""
    fake = h.server.fake
    request_id = str(uuid.uuid4())
    length = int(h.headers.get("Content-Length") or -1)
    if length < 0 and h.command != "DELETE":
        h._graph_error(411, "LengthRequired", "Content-Length required", request_id, {})
        h.close_connection = True
        return 411
    if length > max_body:
        h._graph_error(
            413,
            "RequestEntityTooLarge",
            "The maximum request length supported is 4MB.",
            request_id,
            {},
        )
        h.close_connection = True
        return 413
    body = h.rfile.read(length) if length > 0 else b""
    fake._enter(mailbox)
    try:
        fault = fake._next_fault(fake._graph_faults)
        if fake.latency:
            fake._stopping.wait(fake.latency)
        if fault is not None and not fault.accept:
            return h._fault(fault, request_id, json_error=False)
        status, code, message = _authorize(fake, h.headers.get("Authorization") or "", mailbox)
        if status:
            extra = {"WWW-Authenticate": 'Bearer realm=""'} if status == 401 else {}
            h._graph_error(status, code, message, request_id, extra)
            return status
        state = large_state(fake)
        draft = None
        if draft_id is not None:
            with fake._lock:
                draft = state.drafts.get(draft_id)
            if draft is None or draft.mailbox.lower() != mailbox.lower():
                h._graph_error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                    request_id,
                    {},
                )
                return 404
        if fault is None and action is _send and draft is not None:
            fault = fake._planned(
                BytesHeaderParser(policy=compat32).parsebytes(draft.mime)["subject"]
            )
            if fault is not None and not fault.accept:
                return h._fault(fault, request_id, json_error=False)
        if fault is not None:
            return _accepted_then(h, fault, action, fake, state, mailbox, draft, body, request_id)
        result: int = action(h, fake, state, mailbox, draft, body, request_id)
        return result
    finally:
        fake._leave(mailbox)


def _accepted_then(h: _Handler, fault: Any, action: Any, *args: Any) -> int:
    """Do the request's work with its answer swallowed, then fail the response."""
    h._swallow = True  # type: ignore[attr-defined]
    try:
        action(h, *args)
    finally:
        h._swallow = False  # type: ignore[attr-defined]
    return int(h._fault(fault, args[-1], json_error=False))


def _authorize(fake: FakeGraph, auth: str, mailbox: str) -> tuple[int, str, str]:
    scheme, _, token = auth.partition(" ")
    with fake._lock:
        issued = fake._tokens.get(token) if scheme == "Bearer" else None
    if issued is None or issued.expires <= time.time():
        return 401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
    if large_state(fake).require_readwrite and READWRITE not in issued.roles:
        return 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
    if fake.mailboxes is not None and mailbox.lower() not in fake.mailboxes:
        return 404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid."
    return 0, "", ""


def _bad(h: _Handler, request_id: str, message: str, code: str = "ErrorInvalidRequest") -> int:
    h._graph_error(400, code, message, request_id, {})
    return 400


def _ctype(h: _Handler) -> str:
    return (h.headers.get("Content-Type") or "").split(";")[0].strip().lower()


# ---------------------------------------------------------------- Graph endpoints


def _create_draft(
    h: _Handler, fake: FakeGraph, state: LargeState, mailbox: str, _d: Any, body: bytes, rid: str
) -> int:
    if _ctype(h) != "text/plain":
        h._graph_error(415, "UnsupportedMediaType", "Content-Type must be text/plain", rid, {})
        return 415
    try:
        mime = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        mime = b""
    if not mime:
        return _bad(
            h, rid, "Invalid base64 string for MIME content.", "ErrorMimeContentInvalidBase64String"
        )
    draft_id = "AAMkAD" + secrets.token_urlsafe(24).replace("_", "-") + "="
    with fake._lock:
        state.drafts[draft_id] = Draft(draft_id, mailbox, mime)
        state.created.append(draft_id)
    msg = BytesHeaderParser(policy=compat32).parsebytes(mime)
    h._json(
        201,
        {"id": draft_id, "isDraft": True, "subject": msg.get("Subject")},
        {"request-id": rid},
    )
    return 201


def _add_attachment(
    h: _Handler,
    fake: FakeGraph,
    state: LargeState,
    mailbox: str,
    draft: Draft,
    body: bytes,
    rid: str,
) -> int:
    if _ctype(h) != "application/json":
        return _bad(h, rid, "Content-Type must be application/json")
    try:
        doc = json.loads(body)
        content = base64.b64decode(doc["contentBytes"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return _bad(h, rid, "fileAttachment needs valid JSON with base64 contentBytes")
    if doc.get("@odata.type") != "#microsoft.graph.fileAttachment":
        return _bad(h, rid, "@odata.type must be #microsoft.graph.fileAttachment")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        return _bad(h, rid, "attachment name is required")
    stored = StoredAttachment(
        name,
        doc.get("contentType"),
        len(content),
        hashlib.sha256(content).hexdigest(),
        bool(doc.get("isInline")),
        doc.get("contentId"),
        "post",
    )
    with fake._lock:
        draft.attachments.append(stored)
    h._json(201, {"id": secrets.token_urlsafe(12), "name": name, "size": len(content)})
    return 201


def _create_session(
    h: _Handler,
    fake: FakeGraph,
    state: LargeState,
    mailbox: str,
    draft: Draft,
    body: bytes,
    rid: str,
) -> int:
    try:
        doc = json.loads(body)
    except ValueError:
        return _bad(h, rid, "body must be JSON")
    items = (
        [v for k, v in doc.items() if k.lower() == "attachmentitem"]
        if isinstance(doc, dict)
        else []
    )
    item = items[0] if items and isinstance(items[0], dict) else None
    if item is None:
        return _bad(h, rid, "AttachmentItem is required")
    size = item.get("size")
    if item.get("attachmentType") != "file":
        return _bad(h, rid, "attachmentType must be file")
    if not isinstance(item.get("name"), str) or not item["name"]:
        return _bad(h, rid, "name is required")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ATTACHMENT:
        return _bad(h, rid, "size must be between 1 byte and 150 MB")
    if "isInline" in item and not isinstance(item["isInline"], bool):
        return _bad(h, rid, "isInline must be a boolean")
    sid = secrets.token_urlsafe(16)
    auth = secrets.token_urlsafe(24)
    with fake._lock:
        state.sessions[sid] = Session(sid, auth, draft.id, mailbox, item, size)
        draft.open_sessions += 1
    h._json(
        201,
        {
            "@odata.context": f"{fake.url}/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{fake.url}/_upload/{sid}?authtoken={auth}",
            "expirationDateTime": _expires(),
            "nextExpectedRanges": ["0-"],
        },
        {"request-id": rid},
    )
    return 201


def _send(
    h: _Handler,
    fake: FakeGraph,
    state: LargeState,
    mailbox: str,
    draft: Draft,
    body: bytes,
    rid: str,
) -> int:
    from tests.fakegraph import _Parsed

    if body:
        return _bad(h, rid, "send takes no body")
    if draft.open_sessions:
        return _bad(h, rid, "an attachment upload session is still open")
    if mailbox.lower() in fake.send_as_denied:
        h._graph_error(403, "ErrorSendAsDenied", "The user cannot send as this mailbox.", rid, {})
        return 403
    msg = BytesHeaderParser(policy=compat32).parsebytes(draft.mime)
    fields = [str(v) for n in ("to", "cc", "bcc") for v in (msg.get_all(n) or [])]
    addresses = recipients(fields)
    if not addresses or any(
        not (a.rpartition("@")[0] and "." in a.rpartition("@")[2]) for a in addresses
    ):
        return _bad(h, rid, "At least one recipient is not valid.", "ErrorInvalidRecipients")
    total = len(draft.mime) + sum(a.size for a in draft.attachments)
    if total > state.max_message:
        return _bad(
            h, rid, "The message exceeds the maximum supported size.", "ErrorMessageSizeExceeded"
        )
    sent = LargeSent(mailbox, draft.id, draft.mime, list(draft.attachments), rid, addresses)
    with fake._lock:
        state.drafts.pop(draft.id, None)
        state.sent.append(sent)
    _write_jsonl(fake, sent)
    fake._accept(mailbox, _Parsed(draft.mime, msg, addresses), rid)
    h._reply(202, b"", {"request-id": rid})
    return 202


def _delete(
    h: _Handler,
    fake: FakeGraph,
    state: LargeState,
    mailbox: str,
    draft: Draft,
    body: bytes,
    rid: str,
) -> int:
    with fake._lock:
        state.drafts.pop(draft.id, None)
        state.deleted.append(draft.id)
        for sid, session in list(state.sessions.items()):
            if session.draft_id == draft.id:
                del state.sessions[sid]
    h._reply(204, b"", {"request-id": rid})
    return 204


# ---------------------------------------------------------------- upload URL


def upload(h: _Handler) -> None:
    """PUT (a chunk) or GET (status) on an uploadUrl."""
    fake = h.server.fake
    state = large_state(fake)
    split = urlsplit(h.path)
    h._start(h.command, split.path)
    sid = split.path[len("/_upload/") :]
    auth = parse_qs(split.query).get("authtoken", [""])[0]
    with fake._lock:
        session = state.sessions.get(sid)
    length = int(h.headers.get("Content-Length") or -1)
    rid = str(uuid.uuid4())
    status: int
    if h.command == "PUT" and not 0 <= length <= MAX_CHUNK:
        # Do not read a body that breaks the rules; close instead.
        h._graph_error(
            413 if length > 0 else 411,
            "InvalidRequest",
            "bad Content-Length",
            rid,
            {"Connection": "close"},
        )
        status = 413 if length > 0 else 411
        _record_put(fake, state, sid, h.headers.get("Content-Range"), length, status, h)
        h._log(status)
        return
    body = h.rfile.read(length) if h.command == "PUT" and length > 0 else b""
    if h.headers.get("Authorization"):
        status = 401
        h._graph_error(
            401,
            "InvalidAuthenticationToken",
            "uploadUrl is pre-authenticated; do not send an Authorization header",
            rid,
            {},
        )
    elif session is None or not secrets.compare_digest(auth, session.auth) or session.done:
        status = 404
        h._graph_error(404, "ErrorItemNotFound", "upload session not found", rid, {})
    elif h.command == "GET":
        with fake._lock:
            state.status_gets += 1
        status = 200
        h._json(200, {"expirationDateTime": _expires(), "nextExpectedRanges": [str(session.next)]})
    else:
        status = _put(h, fake, state, session, body, rid)
    if h.command == "PUT":
        _record_put(fake, state, sid, h.headers.get("Content-Range"), length, status, h)
    h._log(status)


def _record_put(
    fake: FakeGraph,
    state: LargeState,
    sid: str,
    crange: str | None,
    length: int,
    status: int,
    h: _Handler,
) -> None:
    m = _RANGE.fullmatch((crange or "").strip())
    start, total = (int(m.group(1)), int(m.group(3))) if m else (-1, -1)
    with fake._lock:
        state.puts.append(
            PutRecord(sid, start, length, total, status, bool(h.headers.get("Authorization")))
        )


def _put(
    h: _Handler, fake: FakeGraph, state: LargeState, session: Session, body: bytes, rid: str
) -> int:
    with fake._lock:
        state.put_count += 1
        fault = state.put_faults.pop(state.put_count, None)
    m = _RANGE.fullmatch((h.headers.get("Content-Range") or "").strip())
    if m is None:
        return _bad(h, rid, "Content-Range must be 'bytes start-end/total'", "InvalidContentRange")
    start, end, total = (int(g) for g in m.groups())
    if total != session.size:
        return _bad(
            h, rid, f"total {total} is not the session size {session.size}", "InvalidContentRange"
        )
    if end < start or end - start + 1 != len(body) or end >= total:
        return _bad(h, rid, "Content-Range does not match Content-Length", "InvalidContentRange")
    if end + 1 < total and len(body) % CHUNK_UNIT:
        return _bad(
            h, rid, "chunks other than the last must be multiples of 320 KiB", "InvalidContentRange"
        )
    if start != session.next:
        h._json(
            416,
            {
                "error": {"code": "InvalidRange", "message": "not the next expected range"},
                "nextExpectedRanges": [str(session.next)],
            },
        )
        return 416
    if fault is not None:
        keep = body[: max(0, min(fault.keep, len(body)))]
        session.hasher.update(keep)
        session.next += len(keep)
        if fault.kind == "reset":
            h._log(0)
            h._reset()
            return 0
        h._graph_error(fault.status, "ServiceUnavailable", "scripted upload fault", rid, {})
        return fault.status
    session.hasher.update(body)
    session.next += len(body)
    if session.next < session.size:
        h._json(200, {"expirationDateTime": _expires(), "nextExpectedRanges": [str(session.next)]})
        return 200
    item = session.item
    stored = StoredAttachment(
        item["name"],
        item.get("contentType"),
        session.size,
        session.hasher.hexdigest(),
        bool(item.get("isInline")),
        item.get("contentId"),
        "upload",
    )
    with fake._lock:
        session.done = True
        state.sessions.pop(session.id, None)
        draft = state.drafts.get(session.draft_id)
        if draft is not None:
            draft.attachments.append(stored)
            draft.open_sessions -= 1
    location = f"{fake.url}/v1.0/users/{session.mailbox}/messages/{session.draft_id}/attachments/x"
    h._reply(201, b"", {"Location": location, "request-id": rid})
    return 201


def _expires() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))


def _write_jsonl(fake: FakeGraph, sent: LargeSent) -> None:
    if fake.out_dir is None:
        return
    doc = {k: v for k, v in asdict(sent).items() if k != "mime"}
    doc["mime_size"] = len(sent.mime)
    line = json.dumps(doc) + "\n"
    with fake._lock:
        fh = fake._jsonl.get("large")
        if fh is None:
            with contextlib.suppress(OSError):
                fh = fake._jsonl["large"] = open(  # noqa: SIM115
                    fake.out_dir / "large.jsonl", "a", buffering=1
                )
        if fh is not None:
            fh.write(line)


__all__ = [
    "Draft",
    "LargeSent",
    "LargeState",
    "StoredAttachment",
    "UploadFault",
    "delete",
    "is_large_path",
    "is_upload_path",
    "large_state",
    "post",
    "upload",
]


# ---------------------------------------------------------------- test messages


@dataclass
class FilePart:
    """An attachment for make_message; cid makes it an inline part of the HTML."""

    name: str
    content_type: str
    data: bytes
    cid: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _filename_params(name: str) -> str:
    if name.isascii():
        return f'filename="{name}"'
    from urllib.parse import quote

    return f"filename*=utf-8''{quote(name, safe='')}"


def make_message(
    files: list[FilePart],
    *,
    subject: str = "large",
    sender: str = "relay@contoso.example",
    to: str = "alice@example.org",
    bcc: str | None = "hidden@example.org",
    text: str = "See the attached files.",
) -> bytes:
    """A CRLF multipart/mixed message: text + HTML (+ inline images), then files.

    Built by hand (base64 with 76-column lines, RFC 2231 names) because the
    email package needs several copies of a 100 MB message and is slow.
    """
    inline = [f for f in files if f.cid]
    attached = [f for f in files if not f.cid]
    imgs = "".join(f'<img src="cid:{f.cid}">' for f in inline)
    alt = (
        'Content-Type: multipart/alternative; boundary="alt-b"\r\n\r\n'
        "--alt-b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{text}\r\n"
        "--alt-b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<p>{text}</p>{imgs}\r\n--alt-b--\r\n"
    ).encode()
    pieces: list[bytes] = []
    headers = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", "MIME-Version: 1.0"]
    if bcc:
        headers.append(f"Bcc: {bcc}")
    headers.append('Content-Type: multipart/mixed; boundary="mix-b"')
    pieces.append(("\r\n".join(headers) + "\r\n\r\nThis is a MIME message.\r\n").encode())
    pieces.append(b"--mix-b\r\n")
    if inline:
        pieces.append(b'Content-Type: multipart/related; boundary="rel-b"\r\n\r\n--rel-b\r\n')
        pieces.append(alt)
        for f in inline:
            pieces.append(b"\r\n--rel-b\r\n")
            pieces.append(_file_part(f, "inline"))
        pieces.append(b"\r\n--rel-b--\r\n")
    else:
        pieces.append(alt)
    for f in attached:
        pieces.append(b"\r\n--mix-b\r\n")
        pieces.append(_file_part(f, "attachment"))
    pieces.append(b"\r\n--mix-b--\r\n")
    return b"".join(pieces)


def _file_part(f: FilePart, disposition: str) -> bytes:
    head = [f"Content-Type: {f.content_type}", "Content-Transfer-Encoding: base64"]
    head.append(f"Content-Disposition: {disposition}; {_filename_params(f.name)}")
    if f.cid:
        head.append(f"Content-ID: <{f.cid}>")
    encoded = base64.encodebytes(f.data).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + encoded


def delivered_files(sent: LargeSent) -> dict[str, tuple[str, str | None, bool, str | None]]:
    """name -> (sha256, content type, inline, contentId) of every file the recipient gets:
    those still inside the draft MIME and those added as attachments."""
    from email import message_from_bytes
    from email.policy import default

    out: dict[str, tuple[str, str | None, bool, str | None]] = {}
    msg = message_from_bytes(sent.mime, policy=default)
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name is None and part.get_content_maintype() == "text":
            continue
        cid = part.get("Content-ID")
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        out[str(name)] = (
            hashlib.sha256(data).hexdigest(),
            part.get_content_type(),
            part.get_content_disposition() == "inline",
            str(cid).strip("<>") if cid else None,
        )
    for a in sent.attachments:
        assert a.name not in out, f"{a.name} delivered twice"
        out[a.name] = (a.sha256, a.content_type, a.is_inline, a.content_id)
    return out


def expected_files(files: list[FilePart]) -> dict[str, tuple[str, str | None, bool, str | None]]:
    return {f.name: (f.sha256, f.content_type, bool(f.cid), f.cid) for f in files}


# A tiny parent for the measured program: a child's ru_maxrss includes the RSS
# of the process that forked it (Linux keeps the high-water mark across exec),
# so measuring a worker forked straight from a 500 MB pytest would be wrong.
_LAUNCHER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, fh)
"""


def run_measured(
    argv: list[str], env: dict[str, str], result_file: str, timeout: float = 300
) -> tuple[int, int, str]:
    """Run argv; (exit code, its peak RSS in bytes, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, result_file, *argv],
        capture_output=True,
        env=env,
        timeout=timeout,
        text=True,
    )
    with open(result_file) as fh:
        doc = json.load(fh)
    return int(doc["exit"]), int(doc["maxrss_kib"]) * 1024, proc.stderr
