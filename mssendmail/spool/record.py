"""The spool record: one file holding the message, its envelope and a checksum.

Layout::

    <message bytes, exactly as received>
    <envelope: UTF-8 JSON object>
    MSSREC1 <message length:020d> <envelope length:010d> <sha256 of both, hex>\\n

The fixed-width footer at the very end makes a torn write (footer missing or
lengths not adding up) and an edit (checksum mismatch) detectable before a
single byte is sent, so such a file is quarantined, never half-sent.
The envelope comes last so submission can stream stdin straight to disk.
"""

from __future__ import annotations

import os
import sys

from mssendmail.errors import DataError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is slow to import; annotations are strings anyway
    import hashlib
    from typing import Any, BinaryIO

MAGIC = b"MSSREC1"
FOOTER_LEN = len(MAGIC) + 1 + 20 + 1 + 10 + 1 + 64 + 1
MAX_ENVELOPE = 1024 * 1024
CHUNK = 256 * 1024
VERSION = 1
MAX_TIME = 16725225600  # 2500-01-01: any time beyond is hostile or a bug


def time_ok(value: object) -> bool:
    """A Unix time that every time function can take: a finite number in [0, MAX_TIME].

    JSON from a submitter may hold NaN, Infinity or 1e20 (json.loads takes them).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value <= MAX_TIME  # False for NaN


class CorruptRecord(DataError):
    """A spool file that is torn, edited or not a record at all."""


def new_sha256() -> hashlib._Hash:
    """SHA-256 for the writer, without loading OpenSSL when it can.

    ``import hashlib`` loads libcrypto, a large share of what a whole
    submission may spend above bare interpreter start-up. The built-in
    implementation gives the same digest but is several times slower on big
    inputs, a price only rare large messages pay (figures: bench/RESULTS.md,
    Submission); long-running programs that loaded
    OpenSSL already (worker, smtpd) get its fast version. Same digest.
    """
    if "_hashlib" not in sys.modules:
        for name in ("_sha256", "_sha2"):  # _sha2 since Python 3.12
            try:
                module = __import__(name)
            except ImportError:
                continue
            hasher: hashlib._Hash = module.sha256()
            return hasher
    import hashlib

    return hashlib.sha256()


def footer(message_len: int, envelope_len: int, digest: str) -> bytes:
    return b"%s %020d %010d %s\n" % (MAGIC, message_len, envelope_len, digest.encode())


def encode_envelope(envelope: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON: the bytes json.dumps(sort_keys=True, separators=(",", ":")) gives.

    Built by hand rather than with ``import json``, whose import compiles
    three regular expressions, a visible share of what a whole submission
    may spend above bare interpreter start-up (bench/RESULTS.md, Submission).
    Strings that need escaping go to json's own C encoder
    (_json.encode_basestring_ascii). Anything beyond
    plain JSON types (never in an envelope) goes to json.dumps itself;
    tests/test_submit.py checks the two agree on generated values.
    """
    parts: list[str] = []
    try:
        _encode(envelope, parts)
    except _NotPlain:
        import json

        return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()
    return "".join(parts).encode()


def _quote(text: str) -> str:
    """A JSON string literal, as json.dumps (ensure_ascii) writes it."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'  # nothing to escape: the usual address or name
    from _json import encode_basestring_ascii  # a C extension, cheap to load

    return encode_basestring_ascii(text)


class _NotPlain(Exception):
    """A value the small encoder leaves to the json package."""


def _encode(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float) and value - value == 0.0:  # finite
        out.append(float.__repr__(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise _NotPlain


class RecordWriter:
    """Streams a message into an open file descriptor, hashing as it goes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.length = 0
        self._hash = new_sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.length += len(data)
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def finish(self, envelope: dict[str, Any]) -> None:
        """Append the envelope and the footer; the record is complete after this."""
        message_len = self.length
        env = encode_envelope(envelope)
        self.write(env)
        self.write(footer(message_len, len(env), self._hash.hexdigest()))


def parse_footer(tail: bytes, file_size: int) -> tuple[int, int, str]:
    """(message length, envelope length, digest) or CorruptRecord."""
    parts = tail.split(b" ")
    if len(tail) != FOOTER_LEN or len(parts) != 4 or parts[0] != MAGIC or not tail.endswith(b"\n"):
        raise CorruptRecord("no record footer: the file is torn or not a spool record")
    # Digits only: int() also takes "0_000211" and "+00211", so a flipped
    # padding zero would go unnoticed.
    if not (parts[1].isdigit() and parts[2].isdigit()):
        raise CorruptRecord("malformed record footer")
    message_len, envelope_len = int(parts[1]), int(parts[2])
    digest = parts[3][:-1].decode("ascii", "replace")
    if message_len + envelope_len + FOOTER_LEN != file_size or envelope_len > MAX_ENVELOPE:
        raise CorruptRecord("record lengths do not match the file size")
    return message_len, envelope_len, digest


def verify(fh: BinaryIO) -> tuple[dict[str, Any], int]:
    """Check the whole record; returns (envelope, message length)."""
    size = os.fstat(fh.fileno()).st_size
    if size < FOOTER_LEN:
        raise CorruptRecord("file too short to be a spool record")
    fh.seek(size - FOOTER_LEN)
    message_len, envelope_len, digest = parse_footer(fh.read(FOOTER_LEN), size)
    fh.seek(0)
    import hashlib  # OpenSSL's fast SHA-256; the worker pays the import, not submission

    hasher = hashlib.sha256()
    remaining = message_len + envelope_len
    env_start = message_len
    env = b""
    offset = 0
    while remaining:
        block = fh.read(min(CHUNK, remaining))
        if not block:
            raise CorruptRecord("file shrank while it was read")
        hasher.update(block)
        if offset + len(block) > env_start:
            env += block[max(0, env_start - offset) :]
        offset += len(block)
        remaining -= len(block)
    if hasher.hexdigest() != digest:
        raise CorruptRecord("checksum mismatch: the file was changed after it was written")
    return parse_envelope(env), message_len


def parse_envelope(data: bytes) -> dict[str, Any]:
    """Decode and validate envelope bytes; CorruptRecord when they are not one."""
    import json  # the reader (worker, mailq) pays the import, not submission

    try:
        envelope = json.loads(data)
    except ValueError:
        raise CorruptRecord("envelope is not valid JSON") from None
    except RecursionError:  # bounded by MAX_ENVELOPE, but json recurses per bracket
        raise CorruptRecord("envelope nests too deeply") from None
    if not isinstance(envelope, dict):
        raise CorruptRecord("envelope is not a JSON object")
    validate_envelope(envelope)
    return envelope


def read_envelope(path: str) -> tuple[dict[str, Any], int]:
    """(envelope, message length) from a record's footer, reading only the envelope.

    The checksum is not verified (that needs the whole file); the worker does
    that before sending. CorruptRecord if the file is not a plausible record.
    For the admin tools: `mssendmail-queue list`, `mailq`.
    """
    import stat  # readers only; submission never gets here

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise
        raise CorruptRecord(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptRecord("not a regular file")
        if st.st_size < FOOTER_LEN:
            raise CorruptRecord("too short to be a spool record")
        tail = os.pread(fd, FOOTER_LEN, st.st_size - FOOTER_LEN)
        message_len, envelope_len, _ = parse_footer(tail, st.st_size)
        raw = os.pread(fd, envelope_len, message_len)
    finally:
        os.close(fd)
    return parse_envelope(raw), message_len


def _clean_text(value: object, what: str, limit: int = 998) -> str:
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in "\r\n\0"):
        raise CorruptRecord(f"envelope field {what} is invalid")
    return value


def validate_envelope(envelope: dict[str, Any]) -> None:
    """Reject envelopes a hostile submitter crafted to confuse the worker."""
    if envelope.get("v") != VERSION:
        raise CorruptRecord("unknown envelope version")
    _clean_text(envelope.get("sender", ""), "sender")
    recipients = envelope.get("recipients")
    if not isinstance(recipients, list) or not recipients or len(recipients) > 10000:
        raise CorruptRecord("envelope has no recipient list")
    for rcpt in recipients:
        if not _clean_text(rcpt, "recipient"):
            raise CorruptRecord("envelope has an empty recipient")
    if envelope.get("full_name") is not None:
        _clean_text(envelope["full_name"], "full_name")
    if not time_ok(envelope.get("time", 0)):
        raise CorruptRecord("envelope time is not a time between 1970 and 2500")


def read_message(fh: BinaryIO, message_len: int) -> bytes:
    """The message bytes of a verified record."""
    fh.seek(0)
    data = fh.read(message_len)
    if len(data) != message_len:
        raise CorruptRecord("file shrank while it was read")
    return data


def copy_message(fh: BinaryIO, message_len: int, out: BinaryIO) -> None:
    """Stream the message bytes of a verified record into another file."""
    fh.seek(0)
    remaining = message_len
    while remaining:
        block = fh.read(min(CHUNK, remaining))
        if not block:
            raise CorruptRecord("file shrank while it was read")
        out.write(block)
        remaining -= len(block)
