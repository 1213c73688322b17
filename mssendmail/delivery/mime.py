"""Make the prepared message MIME that Exchange cannot misread.

Job: prepare() hands over the message it built (CRLF, headers fixed); this
returns the bytes Graph gets, with what is invalid or ambiguous repaired and
every other byte kept. Exchange rebuilds each message from our MIME: what we
leave ambiguous it guesses, and recipients see the guess (mojibake, lines cut
at 998 octets). Well-formed MIME comes back as the very same object.

Repairs, each named in the ``mime_fixed`` log field:

* ``charset``: a text part (or a message without MIME headers) holding 8-bit
  bytes but no charset, or labelled us-ascii, is labelled ``utf-8`` when the
  bytes are valid UTF-8, else DEFAULT_CHARSET.
* ``8bit``: such a part that says 7bit (or nothing) is labelled 8bit too.
* ``mime``: ``MIME-Version: 1.0`` is added when the message had no MIME
  headers and one of the repairs above or below gave it some.
* ``qp``: a text part with a line over 998 octets is re-encoded as
  quoted-printable, charset kept; its decoded bytes are checked to be the
  same before it is used.
* ``base64``: a non-text part with such lines that claims 7bit, 8bit or
  binary is re-encoded as base64; base64 with over-long lines is re-wrapped.
* ``rfc2047``: raw 8-bit bytes in a top-level header become RFC 2047
  encoded-words when they decode as UTF-8 (else as DEFAULT_CHARSET): the
  Subject and other unstructured fields, display names in address fields.
  Address local-parts are never encoded; internationalised addresses (EAI)
  are kept as raw UTF-8 because Exchange Online sends to them.

Never touched (``mime_kept``): multipart/signed, multipart/encrypted,
application/(x-)pkcs7-mime and messages with a DKIM-Signature, because
re-encoding breaks the signature. A signed part inside a multipart/mixed is
skipped with everything below it; the rest of the message is still repaired.

Bounded work: parts are walked with an explicit stack, at most max_depth deep
and max_parts in all (the rest is sent as it is; the worker passes its
MAX_MIME_DEPTH and MAX_MIME_PARTS, which a message over them never reaches
here, so every part of a message that is sent gets walked), and every scan is a
bytes.find/rfind pass over its part, so the cost is linear in the size.

SECURITY: the message comes from any local user. Nothing here evaluates it;
malformed structure (no closing boundary, a header block without an end) is
left as it is rather than guessed at.
"""

from __future__ import annotations

import binascii
import codecs
import re
import threading
from collections import Counter
from dataclasses import dataclass
from email.message import Message

from mssendmail.delivery.limits import KEYS
from mssendmail.errors import DataError
from mssendmail.submission.addresses import parse_mailboxes

CRLF = b"\r\n"
MAX_LINE = 998  # octets, excluding CRLF (RFC 5322 section 2.1.1)
MAX_DEPTH = KEYS["MAX_MIME_DEPTH"][0]  # the defaults; normalise() takes the config's
MAX_PARTS = KEYS["MAX_MIME_PARTS"][0]
MAX_HEADER = 256 * 1024  # a part's header block
BLOCK = 1 << 20
ASCII_CODEC = "ascii"

OPAQUE_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
RAW_CTES = frozenset({"", "7bit", "8bit", "binary"})
ADDRESS_FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "sender",
        "resent-from",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "resent-sender",
        "mail-followup-to",
        "mail-reply-to",
        "disposition-notification-to",
    }
)
# Fields whose syntax has no room for encoded-words: their bytes are left alone.
STRUCTURED_FIELDS = frozenset(
    {
        "date",
        "resent-date",
        "message-id",
        "resent-message-id",
        "in-reply-to",
        "references",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "content-location",
        "dkim-signature",
        "authentication-results",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "list-id",
        "list-unsubscribe",
        "list-post",
        "list-help",
        "list-archive",
    }
)
_CONTENT = ("content-type", "content-transfer-encoding")
_CHARSET_PARAM = re.compile(rb"(;\s*charset\s*=\s*)(\"[^\"]*\"|[^;\s]*)", re.I)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_WORDS = re.compile(r"([ \t]+)")  # ASCII white space only: NBSP is text
_EW_BYTES = 45  # UTF-8 bytes per encoded-word: 60 base64 characters, 72 in all


@dataclass(frozen=True)
class Normalised:
    """The bytes to send, the repairs made, and why a message was left alone."""

    mime: bytes
    fixed: tuple[str, ...] = ()
    kept: str = ""  # "dkim" or "signed" when the message went out untouched


class FixCounts:
    """Repairs per kind since the worker started (shown by `mssendmail-queue stats`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, fixed: tuple[str, ...]) -> None:
        if fixed:
            with self._lock:
                self._counts.update(fixed)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def check_charset(name: str) -> str:
    """The MIME name of a DEFAULT_CHARSET value; ValueError says what is wrong."""
    label = name.strip().lower()
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        raise ValueError(f"DEFAULT_CHARSET={name!r} is not a charset Python knows") from None
    ascii_bytes = bytes(range(128))
    try:
        ok = ascii_bytes.decode(codec) == ascii_bytes.decode("ascii")
    except UnicodeDecodeError:
        ok = False
    if not ok or codec in ("utf-8", ASCII_CODEC):
        raise ValueError(
            f"DEFAULT_CHARSET={name!r} must be an 8-bit superset of ASCII for text that "
            "is not UTF-8, e.g. iso-8859-1 or windows-1252"
        )
    return label


def normalise(
    mime: bytes,
    default_charset: str = "iso-8859-1",
    max_parts: int = MAX_PARTS,
    max_depth: int = MAX_DEPTH,
) -> Normalised:
    """The message with its invalid or ambiguous MIME repaired (see the module doc)."""
    head_end = _header_end(mime, 0, len(mime))
    if head_end is None:
        return Normalised(mime)
    fields = _split_fields(mime[:head_end])
    names = [_name(f) for f in fields]
    if "dkim-signature" in names:
        return Normalised(mime, kept="dkim")
    top = _headers(fields)
    if top.get_content_type() in OPAQUE_TYPES:
        return Normalised(mime, kept="signed")
    walk = _Walk(mime, default_charset, max_parts, max_depth)
    walk.run(fields, top, head_end)
    new_fields = [_encode_field(f, n, default_charset) for f, n in zip(fields, names)]
    if new_fields != fields:
        walk.fixed.add("rfc2047")
    if walk.top_fields is not None:
        new_fields = _merge(new_fields, fields, walk.top_fields)
    if walk.fixed - {"rfc2047"} and "mime-version" not in names:
        new_fields.append(b"MIME-Version: 1.0\r\n")
        walk.fixed.add("mime")
    if not walk.fixed:
        return Normalised(mime, kept=walk.kept)
    edits = sorted(walk.edits)
    if new_fields != fields:
        edits.insert(0, (0, head_end - 2, b"".join(new_fields)))
    return Normalised(_apply(mime, edits), tuple(sorted(walk.fixed)), walk.kept)


# ---------------------------------------------------------------- structure


def _header_end(mime: bytes, start: int, end: int) -> int | None:
    """Offset of the body of the entity at start (after the blank line), or None."""
    if mime.startswith(CRLF, start):
        return start + 2
    found = mime.find(b"\r\n\r\n", start, min(end, start + MAX_HEADER))
    return None if found < 0 else found + 4


def _split_fields(block: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in CRLF."""
    fields: list[bytes] = []
    for line in block.split(CRLF)[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + CRLF
        elif line:
            fields.append(line + CRLF)
    return fields


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("latin-1").lower()


def _headers(fields: list[bytes]) -> Message:
    """The Content-Type and -Transfer-Encoding fields, parsed (the only ones read)."""
    headers = Message()  # compat32: get_param copes with what a hostile value holds
    for field in fields:
        if field[:8].lower() == b"content-" and _name(field) in _CONTENT:
            name, _, value = field.partition(b":")
            unfolded = value.replace(CRLF, b"").strip(b" \t")
            headers[name.strip().decode("latin-1")] = unfolded.decode("ascii", "surrogateescape")
    return headers


def _delimiters(mime: bytes, body: int, end: int, boundary: bytes) -> list[int] | None:
    """Offsets [first content, delimiter CRLF, next content, ..., close CRLF]; None if broken.

    The CRLF before a delimiter belongs to it (RFC 2046 5.1.1), so each part's
    content ends where the next delimiter's CRLF starts.
    """
    marker = CRLF + b"--" + boundary
    out: list[int] = []
    pos = body - 2  # the body starts after a CRLF: a delimiter may open it
    while True:
        hit = mime.find(marker, pos, end)
        if hit < 0:
            return None
        after = hit + len(marker)
        line_end = mime.find(CRLF, after, end)
        line_end = end if line_end < 0 else line_end
        rest = mime[after:line_end]
        if rest.startswith(b"--"):
            if out:
                out.append(hit)
                return out
            return None
        if not rest.strip(b" \t"):
            if out:
                out.append(hit)
            out.append(min(line_end + 2, end))
        pos = after


class _Walk:
    """One pass over the MIME tree; collects byte edits and the names of the repairs."""

    def __init__(self, mime: bytes, default_charset: str, max_parts: int, max_depth: int) -> None:
        self.mime = mime
        self.default_charset = default_charset
        self.max_parts = max_parts
        self.max_depth = max_depth
        self.edits: list[tuple[int, int, bytes]] = []
        self.fixed: set[str] = set()
        self.kept = ""
        self.top_fields: list[bytes] | None = None

    def run(self, top_fields: list[bytes], top: Message, top_body: int) -> None:
        # (header start, body start, end, depth, default content type)
        stack: list[tuple[int, int, int, int, str]] = [(0, top_body, len(self.mime), 0, "")]
        parts = 0
        while stack and parts < self.max_parts:
            start, body, end, depth, default = stack.pop()
            parts += 1
            fields = top_fields if start == 0 else _split_fields(self.mime[start : body - 2])
            headers = top if start == 0 else _headers(fields)
            ctype = headers.get_content_type() if "content-type" in headers else default
            ctype = ctype or "text/plain"
            if ctype in OPAQUE_TYPES:
                self.kept = "signed"
                continue
            if ctype.startswith("multipart/"):
                if depth < self.max_depth:
                    stack.extend(reversed(self._children(headers, ctype, body, end, depth)))
                continue
            if ctype == "message/rfc822":
                inner = _header_end(self.mime, body, end)
                if inner is not None and depth < self.max_depth:
                    stack.append((body, inner, end, depth + 1, "text/plain"))
                continue
            new = self._leaf(fields, headers, ctype, body, end)
            if new is not None:
                if start == 0:
                    self.top_fields = new
                else:
                    self.edits.append((start, body - 2, b"".join(new)))

    def _children(
        self, headers: Message, ctype: str, body: int, end: int, depth: int
    ) -> list[tuple[int, int, int, int, str]]:
        boundary = headers.get_param("boundary")
        if not isinstance(boundary, str) or not boundary or not boundary.isascii():
            return []
        offsets = _delimiters(self.mime, body, end, boundary.encode("ascii"))
        if offsets is None:
            return []
        default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        children = []
        for i in range(0, len(offsets) - 1, 2):
            start, stop = offsets[i], offsets[i + 1]
            child_body = _header_end(self.mime, start, stop)
            if child_body is not None:
                children.append((start, child_body, stop, depth + 1, default))
        return children

    def _leaf(
        self, fields: list[bytes], headers: Message, ctype: str, body: int, end: int
    ) -> list[bytes] | None:
        """New header fields for a leaf (its body edit recorded), or None when it is valid."""
        cte = str(headers.get("content-transfer-encoding") or "").strip().lower()
        if ctype.startswith("text/"):
            return self._text(fields, headers, cte, body, end)
        if cte in RAW_CTES and _has_long_line(self.mime, body, end):
            self.edits.append((body, end, _base64_body(self.mime[body:end])))
            self.fixed.add("base64")
            return _set_field(fields, "Content-Transfer-Encoding", b"base64")
        if cte == "base64" and _has_long_line(self.mime, body, end):
            self.edits.append((body, end, _rewrap_base64(self.mime[body:end])))
            self.fixed.add("base64")
        return None

    def _text(
        self, fields: list[bytes], headers: Message, cte: str, body: int, end: int
    ) -> list[bytes] | None:
        charset = headers.get_param("charset") if "content-type" in headers else None
        label = charset if isinstance(charset, str) else None
        raw = cte in RAW_CTES
        eight = raw and not _region_ascii(self.mime, body, end)
        long = _has_long_line(self.mime, body, end)
        new: list[bytes] | None = None
        if (label is None or _is_ascii_label(label)) and (eight or not raw):
            content = _decode(self.mime[body:end], cte)
            if content is not None and not _all_ascii(content):
                label = "utf-8" if _valid_utf8(content) else self.default_charset
                new = _set_charset(fields, label)
                self.fixed.add("charset")
        if raw and long:
            encoded = _qp_body(self.mime[body:end])
            if encoded is not None:
                self.edits.append((body, end, encoded))
                self.fixed.add("qp")
                if label is None:
                    new = _set_charset(new or fields, "us-ascii")
                    self.fixed.add("charset")
                return _set_field(new or fields, "Content-Transfer-Encoding", b"quoted-printable")
        if eight and cte in ("", "7bit") and new is not None:
            # Only with a charset repair: 8-bit text that names its charset but
            # no transfer encoding is common, harmless and not worth a change.
            self.fixed.add("8bit")
            return _set_field(new or fields, "Content-Transfer-Encoding", b"8bit")
        if cte == "quoted-printable" and long:
            encoded = _qp_body(binascii.a2b_qp(self.mime[body:end]))
            if encoded is not None:
                self.edits.append((body, end, encoded))
                self.fixed.add("qp")
        elif cte == "base64" and long:
            self.edits.append((body, end, _rewrap_base64(self.mime[body:end])))
            self.fixed.add("base64")
        return new


# ---------------------------------------------------------------- scans


def _has_long_line(data: bytes, start: int, end: int) -> bool:
    """Is a line in data[start:end] longer than MAX_LINE octets? (start is a line start)

    Each step looks for the last LF in the next MAX_LINE + 2 bytes, so short
    lines are skipped a window at a time.
    """
    pos = start
    while end - pos > MAX_LINE:
        found = data.rfind(b"\n", pos, pos + MAX_LINE + 2)
        if found < 0:
            return True
        pos = found + 1
    return False


def _all_ascii(data: bytes) -> bool:
    return _region_ascii(data, 0, len(data))


def _region_ascii(data: bytes, start: int, end: int) -> bool:
    """data[start:end].isascii(), a block at a time (no copy of a large part)."""
    return all(data[i : min(i + BLOCK, end)].isascii() for i in range(start, end, BLOCK))


def _valid_utf8(data: bytes) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for i in range(0, len(data), BLOCK):
            decoder.decode(data[i : i + BLOCK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _is_ascii_label(label: str) -> bool:
    try:
        return codecs.lookup(label).name == ASCII_CODEC
    except LookupError:
        return False


def _decode(data: bytes, cte: str) -> bytes | None:
    """The part's content bytes, or None for an encoding we do not know."""
    try:
        if cte in RAW_CTES:
            return data
        if cte == "quoted-printable":
            return binascii.a2b_qp(data)
        if cte == "base64":
            return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return None
    return None


# ---------------------------------------------------------------- encoders


def _qp_body(data: bytes) -> bytes | None:
    """Quoted-printable with CRLF line breaks, or None if it would not decode to data."""
    # A trailing CRLF makes binascii use CRLF soft breaks even for one line;
    # it is taken off again so the decoded content gains no line.
    encoded = binascii.b2a_qp(data + CRLF, istext=True)[:-2]
    if binascii.a2b_qp(encoded) != data or b"\n" in encoded.replace(CRLF, b""):
        return None
    return encoded


def _base64_body(data: bytes) -> bytes:
    return _wrap(binascii.b2a_base64(data, newline=False))


def _rewrap_base64(data: bytes) -> bytes:
    return _wrap(data.translate(None, b" \t\r\n"))


def _wrap(text: bytes, width: int = 76) -> bytes:
    return CRLF.join(text[i : i + width] for i in range(0, len(text), width))


# ---------------------------------------------------------------- header fields


def _set_field(fields: list[bytes], name: str, value: bytes) -> list[bytes]:
    """fields with every `name` field replaced by one `name: value` (added last if absent)."""
    key = name.lower()
    line = name.encode("ascii") + b": " + value + CRLF
    out: list[bytes] = []
    for field in fields:
        if _name(field) == key:
            if line:
                out.append(line)
                line = b""
        else:
            out.append(field)
    if line:
        out.append(line)
    return out


def _set_charset(fields: list[bytes], charset: str) -> list[bytes]:
    """fields with Content-Type's charset set (Content-Type text/plain added if absent)."""
    value = charset.encode("ascii")
    out = list(fields)
    for i, field in enumerate(out):
        if _name(field) == "content-type":
            if _CHARSET_PARAM.search(field):
                out[i] = _CHARSET_PARAM.sub(lambda m: m[1] + value, field, count=1)
            else:
                out[i] = field[:-2].rstrip() + b"; charset=" + value + CRLF
            return out
    out.append(b"Content-Type: text/plain; charset=" + value + CRLF)
    return out


def _merge(encoded: list[bytes], original: list[bytes], walked: list[bytes]) -> list[bytes]:
    """The top header: the walk's Content-* edits applied over the RFC 2047 pass."""
    by_field = dict(zip(original, encoded))
    return [by_field.get(f, f) for f in walked]


def _encode_field(field: bytes, name: str, default_charset: str) -> bytes:
    """field with raw 8-bit text as RFC 2047 encoded-words, or field itself."""
    if field.isascii() or name in STRUCTURED_FIELDS:
        return field
    head, _, raw = field.partition(b":")
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            value = raw.decode(default_charset)
        except UnicodeDecodeError:
            return field
    value = value.replace("\r\n", "").strip(" \t")
    if name in ADDRESS_FIELDS:
        text = _address_list(value)
        if text is None:
            return field
    else:
        text = _unstructured(value)
    return head + b": " + text.encode("utf-8") + CRLF


def _unstructured(value: str) -> str:
    """value with each run of non-ASCII words as encoded-words, the rest as it was."""
    tokens = _WORDS.split(value)  # words at even indices, white space at odd ones
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if i % 2 or tokens[i].isascii():
            out.append(tokens[i])
            i += 1
            continue
        j = i  # the run: words i..j, none ASCII, with the white space between them
        while j + 2 < len(tokens) and not tokens[j + 2].isascii():
            j += 2
        run = "".join(tokens[i : j + 1])
        # Decoders drop white space between two encoded-words: next to an
        # existing one, the white space goes inside ours and a space separates.
        if i >= 2 and _ENCODED_WORD.fullmatch(tokens[i - 2]):
            run = out.pop() + run
            out.append(" ")
        after = ""
        if j + 2 < len(tokens) and _ENCODED_WORD.fullmatch(tokens[j + 2]):
            run += tokens[j + 1]
            after = " "
            j += 1
        out.append(encoded_words(run) + after)
        i = j + 1
    return "".join(out)


def encoded_words(text: str) -> str:
    """text as folded UTF-8 "B" encoded-words, never splitting a character."""
    words: list[str] = []
    chunk = b""
    for char in text:
        octets = char.encode("utf-8")
        if len(chunk) + len(octets) > _EW_BYTES and chunk:
            words.append(chunk.decode("utf-8"))
            chunk = b""
        chunk += octets
    if chunk:
        words.append(chunk.decode("utf-8"))
    return "\r\n ".join(_encoded_word(w.encode("utf-8")) for w in words)


def _encoded_word(octets: bytes) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(octets, newline=False).decode("ascii") + "?="


def _address_list(value: str) -> str | None:
    """An address field with encoded display names; None when it does not parse.

    The project's parser, not email.utils.getaddresses, whose answers differ
    between Python patch releases (issue 14): the field is read the same way
    here as in prepare's sender and recipient checks.
    """
    try:
        pairs = parse_mailboxes(value)
    except DataError:
        return None
    if not pairs or any(not addr or "@" not in addr for _, addr in pairs):
        return None
    items = []
    for name, addr in pairs:
        if not name:
            items.append(addr)
        elif name.isascii():
            items.append('"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{addr}>')
        else:
            items.append(f"{encoded_words(name)} <{addr}>")
    return ",\r\n ".join(items)


def _apply(mime: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    view = memoryview(mime)
    pieces: list[bytes | memoryview] = []
    pos = 0
    for start, stop, replacement in edits:
        pieces.append(view[pos:start])
        pieces.append(replacement)
        pos = stop
    pieces.append(view[pos:])
    return b"".join(pieces)
