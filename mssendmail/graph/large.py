"""Messages too large for sendMail: a draft, its attachments, then send.

Job: Graph's sendMail takes at most 4 MiB per request, about 3 MB of MIME.
Bigger messages (up to 150 MB) go in four steps:

1. ``POST /users/{mailbox}/messages`` (text/plain, base64 MIME) creates a
   draft from the message with its large attachments taken out. Headers,
   recipients and Bcc are the prepared message's own; nothing is re-prepared.
2. Each attachment of 3 MB or more: ``POST .../messages/{id}/attachments/
   createUploadSession``, then PUT byte ranges to the returned uploadUrl in
   chunks of 12 x 320 KiB (under 4 MiB). A failed chunk is retried from the
   server's nextExpectedRanges.
3. Smaller attachments that do not fit in the draft request:
   ``POST .../attachments`` as #microsoft.graph.fileAttachment.
4. ``POST .../messages/{id}/send`` -> 202. Only that counts as sent.

If any step fails, temporarily or for good, the draft is deleted: a retry
starts a fresh draft, and no orphan drafts pile up in the mailbox.

Each part taken out keeps its filename (RFC 2231 and RFC 2047 names are
decoded), its content type and, for inline parts, isInline + contentId, so
HTML with cid: images still renders. Signed or encrypted messages
(multipart/signed, multipart/encrypted, application/pkcs7-mime) cannot be
split without breaking them: PermanentFailure. A 403 on the draft means the
app lacks Mail.ReadWrite: PermanentFailure that says so.

Memory: the MIME tree is found by scanning the message bytes in place
(bytes.find with bounds, no copies); only header blocks go through the
email package. Attachments are decoded block by block straight into the
upload chunk, so beyond the message itself at most one chunk (3.75 MiB),
one decode block and the draft (under 3 MB, plus its base64) are held.
The email package's parsers are not used on the whole message because they
hold several decoded text copies of it (hundreds of MB for 100 MB of mail).

SECURITY: the uploadUrl is pre-authenticated (a token in its query): it
gets no Authorization header, and it is scrubbed from every error text, so
it never reaches a log line or a dead-letter record. The message is hostile
input: nesting depth is capped and malformed structure is handled as text.

FILES: none.
"""

from __future__ import annotations

import binascii
import json
import logging
import mimetypes
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from mssendmail.delivery.limits import LimitExceeded, check_comments
from mssendmail.errors import DeliveryError, PermanentFailure, TemporaryFailure
from mssendmail.graph.classify import (
    classify_http,
    graph_error,
    mark_unknown,
    one_line,
    parse_retry_after,
)
from mssendmail.logs import kv
from mssendmail.transport import Delivered

if TYPE_CHECKING:
    from mssendmail.graph.transport import GraphTransport

log = logging.getLogger("mssendmail.graph.large")

KIB = 1024
# Upload chunks must be multiples of 320 KiB and under 4 MiB.
CHUNK = 12 * 320 * KIB  # 3,932,160 bytes
# Attachments this large (decoded) must use an upload session.
UPLOAD_MIN = 3_000_000
# Raw MIME in the draft request: its base64 must stay under 4 MiB (3 MiB raw);
# below DRAFT_TARGET small attachments may stay inline in the draft.
DRAFT_MAX = 3_000_000
DRAFT_TARGET = 2_000_000
DECODE_BLOCK = 1024 * KIB  # encoded bytes decoded at a time
MAX_DEPTH = 30
MAX_HEADER = 256 * KIB  # a part's header section
RETRY_DELAYS = (0.5, 2.0, 5.0)  # between attempts of one failed chunk
RETRY_AFTER_MAX = 30.0

OPAQUE_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
SIGNED_REASON = (
    "signed or encrypted message (multipart/signed, application/pkcs7-mime) is too large "
    "for sendMail and cannot be split into a draft and attachments without breaking "
    "its signature; send it smaller than about 3 MB"
)
READWRITE_REASON = (
    "messages over about 3 MB are sent as a draft with attachments, and the app needs "
    "the Mail.ReadWrite application permission for that; grant Mail.ReadWrite "
    "(Application) with admin consent, or send smaller messages"
)
_B64_JUNK = bytes(
    c
    for c in range(256)
    if c not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


# ---------------------------------------------------------------- MIME structure


@dataclass
class Part:
    """One MIME entity, as offsets into the message bytes."""

    header_start: int
    body_start: int
    end: int  # end of the body, exclusive
    headers: Message
    # The bytes to drop to take this part out of its parent multipart:
    # its delimiter line and its content.
    cut: tuple[int, int] | None = None
    children: list[Part] = field(default_factory=list)
    boundary: bytes = b""
    close: int = -1  # offset of the close delimiter's CRLF in a multipart body
    depth: int = 0

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)


@dataclass
class Attachment:
    """A part taken out of the draft and added through Graph."""

    part: Part
    name: str
    content_type: str
    size: int  # decoded
    is_inline: bool
    content_id: str | None


def _header_end(mime: bytes, start: int, end: int) -> int:
    """Offset where the body of the entity at start begins."""
    if mime.startswith(b"\r\n", start):
        return start + 2  # no header fields
    found = mime.find(b"\r\n\r\n", start, min(end, start + MAX_HEADER))
    if found < 0:
        # No blank line near the start: a broken part. Parsing megabytes as
        # header fields would cost many times their size, so it has none.
        return end if end - start <= MAX_HEADER else start
    return found + 4


def _parse_headers(block: bytes) -> Message:
    # The default policy's header parser recurses on nested comments.
    try:
        check_comments("a MIME part header", block.decode("latin-1"))
    except LimitExceeded as exc:
        raise PermanentFailure(str(exc), code=exc.limit) from None
    return BytesHeaderParser(policy=default_policy).parsebytes(block)


@dataclass
class PartBudget:
    """Limits for parse(): more parts or deeper nesting raise LimitExceeded."""

    max_parts: int
    max_depth: int
    parts: int = 0

    def check_count(self, more: int) -> None:
        """Refuse early when a multipart's delimiters alone exceed what is left."""
        if self.parts + more - 1 > self.max_parts:
            self.parts = self.max_parts
            self.spend(0)

    def spend(self, depth: int) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise LimitExceeded(
                "MAX_MIME_PARTS",
                f"MIME parts: more than MAX_MIME_PARTS={self.max_parts}; "
                "raise MAX_MIME_PARTS in the config to send it",
            )
        if depth > self.max_depth:
            raise LimitExceeded(
                "MAX_MIME_DEPTH",
                f"MIME nesting: deeper than MAX_MIME_DEPTH={self.max_depth}; "
                "raise MAX_MIME_DEPTH in the config to send it",
            )


def parse(
    mime: bytes,
    start: int = 0,
    end: int | None = None,
    depth: int = 0,
    budget: PartBudget | None = None,
) -> Part:
    """The MIME tree of mime[start:end]; malformed multiparts become leaves.

    Recursion is bounded by MAX_DEPTH (and the budget's max_depth), never by the input.
    """
    end = len(mime) if end is None else end
    if budget is not None:
        budget.spend(depth)
    body = _header_end(mime, start, end)
    headers = _parse_headers(mime[start:body])
    part = Part(start, body, end, headers, depth=depth)
    ctype = headers.get_content_type()
    if not ctype.startswith("multipart/") or ctype in OPAQUE_TYPES or depth >= MAX_DEPTH:
        return part
    raw_boundary = headers.get_param("boundary")
    if not isinstance(raw_boundary, str) or not raw_boundary:
        return part
    try:
        boundary = raw_boundary.encode("ascii")
    except UnicodeEncodeError:
        return part
    if budget is not None:
        # bytes.count runs in C: a bomb of 60,000 parts is refused here,
        # before a Python loop walks its delimiters.
        budget.check_count(mime.count(b"\r\n--" + boundary, body, end))
    delims = _delimiters(mime, body, end, boundary)
    if delims is None or len(delims) < 2:
        return part  # no close delimiter or no part: leave it alone
    part.boundary = boundary
    for (d_start, content_start), (next_start, _) in zip(delims, delims[1:]):
        child = parse(mime, content_start, next_start, depth + 1, budget)
        child.cut = (d_start, next_start)
        part.children.append(child)
    part.close = delims[-1][0]
    return part


def _delimiters(mime: bytes, body: int, end: int, boundary: bytes) -> list[tuple[int, int]] | None:
    """(delimiter start, content start) for each part, then (close start, -1).

    A delimiter is CRLF "--" boundary at a line start; the CRLF before it
    belongs to the delimiter (RFC 2046 5.1.1), except at the body's start.
    """
    marker = b"--" + boundary
    found: list[tuple[int, int]] = []
    pos = body
    while pos < end:
        if mime.startswith(marker, pos) and pos == body:
            d_start, after = pos, pos + len(marker)
        else:
            hit = mime.find(b"\r\n" + marker, pos, end)
            if hit < 0:
                return None
            d_start, after = hit, hit + 2 + len(marker)
        line_end = mime.find(b"\r\n", after, end)
        line_end = end if line_end < 0 else line_end
        rest = mime[after:line_end]
        if rest.startswith(b"--"):
            found.append((d_start, -1))
            return found
        if rest.strip(b" \t"):
            pos = after  # "--boundaryX": a longer string, not our delimiter
            continue
        found.append((d_start, min(line_end + 2, end)))
        pos = line_end
    return None


def attachment_count(root: Part) -> int:
    """Leaves a reader sees as files: what Graph would turn into attachments."""
    return sum(1 for p in walk_leaves(root) if not _is_body_text(p))


def graph_requests(the_plan: Plan) -> int:
    """Requests one attempt of this plan makes: draft, sessions, chunks, posts, send."""
    uploads = sum(1 + -(-a.size // CHUNK) for a in the_plan.uploads)
    return 2 + uploads + len(the_plan.posts)


def walk_leaves(part: Part) -> Iterator[Part]:
    if part.children:
        for child in part.children:
            yield from walk_leaves(child)
    else:
        yield part


# ---------------------------------------------------------------- decoding


def decoded_blocks(mime: bytes, part: Part) -> Iterator[bytes]:
    """The part's decoded body, a block at a time (never the whole body at once)."""
    cte = str(part.headers.get("Content-Transfer-Encoding") or "").strip().lower()
    start, end = part.body_start, part.end
    if cte == "base64":
        carry = b""
        for pos in range(start, end, DECODE_BLOCK):
            data = carry + mime[pos : min(pos + DECODE_BLOCK, end)].translate(None, _B64_JUNK)
            cut = len(data) - len(data) % 4
            carry = data[cut:]
            if cut:
                yield binascii.a2b_base64(data[:cut])
        if len(carry) > 1:  # 2 or 3 characters: the unpadded end of the data
            yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))
    elif cte == "quoted-printable":
        pos = start
        while pos < end:
            stop = mime.find(b"\r\n", min(pos + DECODE_BLOCK, end), end)
            stop = end if stop < 0 else stop + 2
            yield binascii.a2b_qp(mime[pos:stop])
            pos = stop
    else:
        for pos in range(start, end, DECODE_BLOCK):
            yield mime[pos : min(pos + DECODE_BLOCK, end)]


def decoded_size(mime: bytes, part: Part) -> int:
    cte = str(part.headers.get("Content-Transfer-Encoding") or "").strip().lower()
    if cte not in ("base64", "quoted-printable"):
        return part.end - part.body_start
    return sum(len(block) for block in decoded_blocks(mime, part))


def chunks_from(mime: bytes, part: Part, offset: int, size: int = CHUNK) -> Iterator[bytes]:
    """Upload chunks of the decoded part from offset: all but the last exactly size bytes."""
    buf = bytearray()
    skip = offset
    for block in decoded_blocks(mime, part):
        if skip:
            if len(block) <= skip:
                skip -= len(block)
                continue
            block = block[skip:]
            skip = 0
        buf += block
        while len(buf) >= size:
            yield bytes(memoryview(buf)[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


# ---------------------------------------------------------------- the split


def _is_body_text(part: Part) -> bool:
    """Text the reader sees as the message itself rather than as a file."""
    h = part.headers
    return (
        h.get_content_maintype() == "text"
        and h.get_content_disposition() != "attachment"
        and not h.get_filename()
    )


def _clean_name(name: str) -> str:
    name = _CONTROL.sub(" ", name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return name.strip()[:255]


def describe(mime: bytes, part: Part, index: int) -> Attachment:
    h = part.headers
    ctype = h.get_content_type()
    try:
        filename = h.get_filename()
    except (ValueError, LookupError, UnicodeError):
        filename = None
    name = _clean_name(filename) if isinstance(filename, str) else ""
    raw_cid = h.get("Content-ID")
    content_id = str(raw_cid).strip().strip("<>").strip() if raw_cid else None
    if not name:
        ext = ".eml" if ctype == "message/rfc822" else (mimetypes.guess_extension(ctype) or ".bin")
        stem = "message" if h.get_content_maintype() == "text" else "attachment"
        name = f"{stem}{index}{ext}" if index else f"{stem}{ext}"
    disposition = h.get_content_disposition()
    is_inline = disposition == "inline" or (disposition is None and bool(content_id))
    return Attachment(part, name, ctype, decoded_size(mime, part), is_inline, content_id or None)


@dataclass
class Plan:
    """The draft MIME and the attachments to add to it."""

    draft: bytes
    uploads: list[Attachment]  # >= UPLOAD_MIN: upload sessions
    posts: list[Attachment]  # smaller: fileAttachment POSTs


def _top_is_opaque(root: Part) -> bool:
    return root.content_type in OPAQUE_TYPES


def plan(mime: bytes) -> Plan:
    """Decide which parts leave the draft; raise PermanentFailure if it cannot be done."""
    root = parse(mime)
    if _top_is_opaque(root):
        raise PermanentFailure(SIGNED_REASON, code="SignedMessageTooLarge")
    leaves = [p for p in walk_leaves(root)]
    opaque = [p for p in leaves if p.content_type in OPAQUE_TYPES]
    files = [p for p in leaves if p.content_type not in OPAQUE_TYPES and not _is_body_text(p)]
    texts = [p for p in leaves if p.content_type not in OPAQUE_TYPES and _is_body_text(p)]
    described: dict[int, Attachment] = {}

    def att(p: Part) -> Attachment:
        if id(p) not in described:
            described[id(p)] = describe(mime, p, 0)
        return described[id(p)]

    removed: list[Part] = []
    size = len(mime)

    def take(p: Part) -> None:
        nonlocal size
        removed.append(p)
        size -= p.end - p.body_start if p.cut is None else p.cut[1] - p.cut[0]

    # Big files must go through upload sessions; then, largest first, smaller
    # files until the draft is comfortably under the request limit; then, as a
    # last resort, oversized body text (a 10 MB cron log) becomes a text file.
    for p in sorted(files, key=lambda p: p.end - p.body_start, reverse=True):
        if att(p).size >= UPLOAD_MIN or size > DRAFT_TARGET:
            take(p)
    if size > DRAFT_MAX:
        for n, p in enumerate(sorted(texts, key=lambda p: p.end - p.body_start, reverse=True)):
            if size <= DRAFT_TARGET:
                break
            described[id(p)] = describe(mime, p, n)
            take(p)
    if size > DRAFT_MAX:
        if opaque:
            raise PermanentFailure(SIGNED_REASON, code="SignedMessageTooLarge")
        raise PermanentFailure(
            f"the message without its attachments is still {size} bytes, more than a Graph "
            "request can carry; send it with less inline content",
            code="MessageTooLargeForSendMail",
        )
    draft = build_draft(mime, root, removed)
    taken = [att(p) for p in removed]
    return Plan(
        draft,
        [a for a in taken if a.size >= UPLOAD_MIN],
        [a for a in taken if a.size < UPLOAD_MIN],
    )


EMPTY_TEXT = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"


def build_draft(mime: bytes, root: Part, removed: list[Part]) -> bytes:
    """The message with the removed parts cut out (and an empty text part where needed)."""
    gone = {id(p) for p in removed}
    if id(root) in gone:
        # The whole body is one attachment: keep the headers, minus Content-*.
        head = mime[: root.body_start]
        lines = _header_lines(head)
        kept = [ln for ln in lines if not ln.lower().startswith(b"content-")]
        return b"".join(kept) + EMPTY_TEXT + b"\r\n"
    pieces: list[tuple[int, int] | bytes] = []
    _emit(mime, root, gone, pieces, root.header_start, root.end)
    return b"".join(p if isinstance(p, bytes) else mime[p[0] : p[1]] for p in pieces)


def _header_lines(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines (head ends with the blank line)."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-2]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def _emit(
    mime: bytes,
    part: Part,
    gone: set[int],
    out: list[tuple[int, int] | bytes],
    start: int,
    end: int,
) -> None:
    """Append mime[start:end] minus removed descendants of part, as offsets."""
    pos = start
    for child in part.children:
        assert child.cut is not None
        if id(child) in gone:
            out.append((pos, child.cut[0]))
            pos = child.cut[1]
        elif child.children:
            out.append((pos, child.cut[0]))
            _emit(mime, child, gone, out, child.cut[0], child.cut[1])
            pos = child.cut[1]
    if part.children and all(id(c) in gone for c in part.children):
        # A multipart needs at least one part (RFC 2046): an empty text one.
        out.append((pos, part.close))
        out.append(b"\r\n--" + part.boundary + b"\r\n" + EMPTY_TEXT + b"\r\n")
        pos = part.close
    out.append((pos, end))


# ---------------------------------------------------------------- Graph calls


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    # An explicit auth also stops requests from adding .netrc credentials.
    request.headers.pop("Authorization", None)
    return request


class LargeSender:
    """One large send through a GraphTransport's session, tokens and timeouts."""

    def __init__(self, transport: GraphTransport, mailbox: str, queue_id: str) -> None:
        self.t = transport
        self.mailbox = mailbox
        self.queue_id = queue_id
        self.base = f"{transport.graph_url}/v1.0/users/{quote(mailbox, safe='@')}/messages"
        self.upload_secrets: list[str] = []

    # -- plumbing ------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self.upload_secrets:
            text = text.replace(secret, "<uploadUrl>")
        return text

    def _graph(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> requests.Response:
        """One Graph request with the 401 pattern: one fresh token, one retry."""
        token = self.t.tokens.token()
        response = self._request(method, url, body, content_type, token)
        if response.status_code == 401:
            token = self.t.tokens.token(force_refresh=True, rejected=token)
            response = self._request(method, url, body, content_type, token)
        return response

    def _request(
        self, method: str, url: str, body: bytes | None, content_type: str | None, token: str
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
        if content_type:
            headers["Content-Type"] = content_type
        return self._http("cannot reach Graph", method, url, data=body, headers=headers)

    def _http(self, what: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request through the session, no redirects; a network error is a
        TemporaryFailure ``what: <error>`` with upload URLs scrubbed out."""
        try:
            return self.t.session.request(
                method, url, timeout=self.t.timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise TemporaryFailure(
                f"{what}: {type(exc).__name__}: {one_line(self._scrub(str(exc)))}"
            ) from None

    def _fail(self, response: requests.Response, step: str) -> DeliveryError:
        exc = classify_http(
            response.status_code, response.content, response.headers, mailbox=self.mailbox
        )
        exc.args = (f"{step}: {self._scrub(str(exc))}",)
        return exc

    # -- the four steps ------------------------------------------------------
    def send(self, mime: bytes) -> Delivered:
        started = time.monotonic()
        the_plan = plan(mime)
        requests_needed = graph_requests(the_plan)
        limit = getattr(self.t, "max_requests", None)
        if limit is not None and requests_needed > limit:
            raise PermanentFailure(
                f"Graph requests for this large message: {requests_needed} is over "
                f"MAX_GRAPH_REQUESTS={limit}; raise MAX_GRAPH_REQUESTS in the config to send it",
                code="MAX_GRAPH_REQUESTS",
            )
        draft_id = self.create_draft(the_plan.draft)
        del the_plan.draft  # the draft's copy is no longer needed
        try:
            for a in the_plan.uploads:
                self.upload(draft_id, mime, a)
            for a in the_plan.posts:
                self.post_attachment(draft_id, mime, a)
            delivered = self.send_draft(draft_id)
        except BaseException as exc:
            if not getattr(exc, "outcome_unknown", False):
                self.delete_draft(draft_id)
            # else the draft tells later whether /send went through (idempotency.py)
            raise
        log.debug(
            kv(
                id=self.queue_id,
                large="sent",
                uploads=len(the_plan.uploads),
                posts=len(the_plan.posts),
                ms=int((time.monotonic() - started) * 1000),
            )
        )
        return delivered

    def msg_url(self, draft_id: str) -> str:
        return f"{self.base}/{quote(draft_id, safe='=-_')}"

    def create_draft(self, draft: bytes) -> str:
        import base64

        response = self._graph(
            "POST", self.base, body=base64.b64encode(draft), content_type="text/plain"
        )
        if response.status_code == 403:
            code, _, _ = graph_error(response.content)
            if code not in ("ErrorSendAsDenied",):
                detail = f" (Graph HTTP 403 {code})" if code else " (Graph HTTP 403)"
                raise PermanentFailure(
                    READWRITE_REASON + detail,
                    status=403,
                    code=code or "MailReadWriteMissing",
                    request_id=response.headers.get("request-id"),
                )
        if response.status_code not in (200, 201):
            raise self._fail(response, "creating the draft failed")
        draft_id = _json(response).get("id")
        if not isinstance(draft_id, str) or not draft_id:
            raise TemporaryFailure("Graph created a draft but returned no id")
        return draft_id

    def delete_draft(self, draft_id: str) -> None:
        """Best effort: a failure is logged, the original error is what counts."""
        try:
            response = self._graph("DELETE", self.msg_url(draft_id))
            ok = response.status_code in (200, 202, 204, 404)
            status: object = response.status_code
        except DeliveryError as exc:
            ok, status = False, str(exc)
        if not ok:
            log.warning(
                kv(
                    id=self.queue_id,
                    event="draft-not-deleted",
                    mailbox=self.mailbox,
                    status=status,
                    hint="delete the draft in the mailbox's Drafts folder",
                )
            )

    def send_draft(self, draft_id: str) -> Delivered:
        try:
            response = self._graph("POST", self.msg_url(draft_id) + "/send", body=b"")
        except TemporaryFailure as exc:  # the request may have gone out: unknown
            exc.outcome_unknown, exc.draft_id = True, draft_id
            raise
        if response.status_code != 202:
            failure = mark_unknown(
                self._fail(response, "sending the draft failed"), response.status_code
            )
            if failure.outcome_unknown:
                failure.draft_id = draft_id
            raise failure
        return Delivered(status=202, request_id=response.headers.get("request-id"))

    def _item(self, a: Attachment) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": a.name,
            "contentType": a.content_type,
            "isInline": a.is_inline,
        }
        if a.content_id:
            item["contentId"] = a.content_id
        return item

    def post_attachment(self, draft_id: str, mime: bytes, a: Attachment) -> None:
        import base64

        meta = {"@odata.type": "#microsoft.graph.fileAttachment", **self._item(a)}
        # Splice the base64 in rather than json.dumps a 4 MB string (one copy less).
        head = json.dumps(meta)[:-1].encode() + b', "contentBytes": "'
        content = b"".join(decoded_blocks(mime, a.part))
        body = head + base64.b64encode(content) + b'"}'
        del content
        url = self.msg_url(draft_id) + "/attachments"
        response = self._graph("POST", url, body=body, content_type="application/json")
        if response.status_code not in (200, 201):
            raise self._fail(response, f"adding attachment {a.name!r} failed")

    def upload(self, draft_id: str, mime: bytes, a: Attachment) -> None:
        item = {"attachmentType": "file", **self._item(a), "size": a.size}
        url = self.msg_url(draft_id) + "/attachments/createUploadSession"
        body = json.dumps({"AttachmentItem": item}).encode()
        response = self._graph("POST", url, body=body, content_type="application/json")
        if response.status_code not in (200, 201):
            raise self._fail(response, f"creating the upload session for {a.name!r} failed")
        upload_url = _json(response).get("uploadUrl")
        if not isinstance(upload_url, str) or urlsplit(upload_url).scheme != "https":
            raise TemporaryFailure("Graph returned no usable https uploadUrl")
        split = urlsplit(upload_url)
        self.upload_secrets += [upload_url, split.path + ("?" + split.query if split.query else "")]
        self._put_all(upload_url, mime, a)

    def _put_all(self, url: str, mime: bytes, a: Attachment) -> None:
        offset = 0
        failures = 0
        while offset < a.size:
            restart = False
            for chunk in chunks_from(mime, a.part, offset):
                try:
                    after = self._put(url, offset, chunk, a.size)
                except _Abort:
                    raise
                except TemporaryFailure as exc:
                    if failures >= len(RETRY_DELAYS):
                        raise TemporaryFailure(
                            f"uploading {a.name!r} failed {failures + 1} times at byte "
                            f"{offset}: {exc}"
                        ) from None
                    delay = RETRY_DELAYS[failures]
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, RETRY_AFTER_MAX))
                    failures += 1
                    time.sleep(delay)
                    offset = self._resume_offset(url, offset, a.size)
                    restart = True
                    break
                failures = 0
                if after != offset + len(chunk):
                    offset, restart = after, True  # the server wants another range
                    break
                offset = after
            if not restart and offset < a.size:
                raise TemporaryFailure(f"attachment {a.name!r} changed size while uploading")

    def _put(self, url: str, offset: int, chunk: bytes, total: int) -> int:
        """PUT one chunk; the offset the server expects next (total when complete)."""
        last = offset + len(chunk) - 1
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {offset}-{last}/{total}",
        }
        response = self._http(
            "upload chunk failed", "PUT", url, data=chunk, headers=headers, auth=_no_auth
        )
        status = response.status_code
        if status == 201 and last + 1 == total:
            return total
        if status == 200:
            nxt = _next_expected(_json(response))
            if nxt is not None:
                return nxt
            return offset + len(chunk)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in (408, 416, 429) or status >= 500:
            raise TemporaryFailure(
                f"upload chunk got HTTP {status}", status=status, retry_after=retry_after
            )
        if status in (401, 403, 404, 410):
            # The session expired or was refused: a fresh draft next attempt.
            raise _Abort(f"the upload session was refused (HTTP {status}); retrying later", status)
        raise self._fail(response, "uploading an attachment failed")

    def _resume_offset(self, url: str, fallback: int, total: int) -> int:
        """Where to go on after a failed chunk: the session's nextExpectedRanges."""
        try:
            response = self.t.session.get(
                url,
                auth=_no_auth,
                timeout=self.t.timeout,
                allow_redirects=False,
            )
        except requests.RequestException:
            return fallback
        if response.status_code != 200:
            return fallback
        nxt = _next_expected(_json(response))
        return fallback if nxt is None or not 0 <= nxt <= total else nxt


class _Abort(TemporaryFailure):
    """A chunk failure that retrying the chunk cannot fix."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, status=status)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _next_expected(doc: dict[str, Any]) -> int | None:
    """The start of nextExpectedRanges: Outlook sends ["N"], OneDrive ["N-M"]."""
    ranges = doc.get("nextExpectedRanges")
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], str):
        return None
    head = ranges[0].split("-", 1)[0].strip()
    return int(head) if head.isdigit() else None


def send_large(transport: GraphTransport, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
    """Send a prepared message too large for sendMail (the four steps above)."""
    return LargeSender(transport, mailbox, queue_id).send(mime)
