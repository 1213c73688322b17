"""delivery/mime.py: the repairs, the byte-identical no-op, and what is never touched."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import time
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssendmail.config import Config
from mssendmail.delivery.mime import MAX_LINE, FixCounts, check_charset, normalise
from mssendmail.delivery.prepare import policy_for, prepare
from mssendmail.errors import ConfigError

UTF8 = "Grüße, Привет, 你好, 👋🏽".encode()
LATIN1 = "Grüße aus Köln".encode("latin-1")


def parse(mime: bytes) -> EmailMessage:
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def longest_line(mime: bytes) -> int:
    return max(len(line) for line in mime.split(b"\r\n"))


def head(mime: bytes) -> bytes:
    return mime.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def body(mime: bytes) -> bytes:
    return mime.split(b"\r\n\r\n", 1)[1]


def multipart(*parts: bytes, top: bytes = b"", boundary: bytes = b"b1") -> bytes:
    out = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        + top
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\npreamble\r\n'
    )
    for part in parts:
        out += b"--" + boundary + b"\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue\r\n"


def part_payloads(mime: bytes) -> list[Message]:
    return [p for p in parse(mime).walk() if not p.is_multipart()]


# ---------------------------------------------------------------- no MIME headers


def test_utf8_body_without_mime_headers_gets_mime_version_type_charset_and_8bit() -> None:
    mime = b"From: a@example.org\r\nSubject: cron\r\n\r\n" + UTF8 + b"\r\n"
    result = normalise(mime)
    assert result.fixed == ("8bit", "charset", "mime")
    h = head(result.mime)
    assert b"MIME-Version: 1.0\r\n" in h
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in h
    assert b"Content-Transfer-Encoding: 8bit\r\n" in h
    assert body(result.mime) == UTF8 + b"\r\n"  # the body is not touched
    assert parse(result.mime).get_content() == UTF8.decode() + "\r\n"


def test_body_that_is_not_utf8_is_labelled_with_default_charset() -> None:
    mime = b"Subject: x\r\n\r\n" + LATIN1 + b"\r\n"
    assert b"charset=iso-8859-1" in head(normalise(mime).mime)
    result = normalise(mime, "windows-1252")
    assert b"charset=windows-1252" in head(result.mime)
    assert parse(result.mime).get_content() == "Grüße aus Köln\r\n"


def test_long_line_without_mime_headers_becomes_quoted_printable() -> None:
    text = ("é" * 2500 + "\r\nshort\r\n" + "x" * 5000).encode()
    result = normalise(b"Subject: x\r\n\r\n" + text)
    msg = parse(result.mime)
    assert result.fixed == ("charset", "mime", "qp")
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_payload(decode=True) == text
    assert longest_line(result.mime) <= 76


def test_long_ascii_line_gets_a_declared_charset_too() -> None:
    result = normalise(b"Subject: x\r\n\r\n" + b"a" * 1500 + b"\r\n")
    msg = parse(result.mime)
    assert msg.get_content_charset() == "us-ascii"
    assert msg.get_payload(decode=True) == b"a" * 1500 + b"\r\n"


def test_line_of_exactly_998_octets_is_valid() -> None:
    mime = b"Subject: x\r\n\r\n" + b"a" * MAX_LINE + b"\r\n" + b"b" * MAX_LINE
    assert normalise(mime).mime is mime
    assert normalise(mime + b"b").fixed == ("charset", "mime", "qp")


# ---------------------------------------------------------------- parts


def test_text_part_with_long_line_keeps_its_charset_and_decodes_the_same() -> None:
    text = "Zażółć gęślą jaźń ".encode("iso-8859-2") * 100
    other = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nshort and valid"
    mime = multipart(
        b"Content-Type: text/plain; charset=iso-8859-2\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + text,
        other,
    )
    result = normalise(mime)
    assert result.fixed == ("qp",)
    first, _ = part_payloads(result.mime)
    assert first.get_content_charset() == "iso-8859-2"
    assert first["Content-Transfer-Encoding"] == "quoted-printable"
    assert first.get_payload(decode=True) == text
    assert b"--b1\r\n" + other + b"\r\n--b1--" in result.mime  # byte for byte
    assert result.mime.endswith(b"--b1--\r\nepilogue\r\n")


def test_non_text_part_with_long_lines_claiming_7bit_becomes_base64() -> None:
    data = b'{"k": "' + b"v" * 3000 + b'"}\r\n{"k": 2}'
    for cte in (b"7bit", b"8bit", b"binary", b""):
        field = b"Content-Transfer-Encoding: " + cte + b"\r\n" if cte else b""
        mime = multipart(b"Content-Type: application/json\r\n" + field + b"\r\n" + data)
        result = normalise(mime)
        assert result.fixed == ("base64",)
        (part,) = part_payloads(result.mime)
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_payload(decode=True) == data
        assert longest_line(result.mime) <= 76


def test_base64_with_over_long_lines_is_rewrapped() -> None:
    data = bytes(range(256)) * 20
    encoded = base64.b64encode(data)
    mime = multipart(
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    result = normalise(mime)
    assert result.fixed == ("base64",)
    assert part_payloads(result.mime)[0].get_payload(decode=True) == data
    assert longest_line(result.mime) <= 76


def test_quoted_printable_with_over_long_lines_is_reencoded() -> None:
    text = "ü".encode() * 1000
    mime = multipart(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        b"\r\n\r\n" + binascii.b2a_qp(text).replace(b"=\n", b"")
    )
    assert longest_line(mime) > MAX_LINE
    result = normalise(mime)
    assert result.fixed == ("qp",)
    assert part_payloads(result.mime)[0].get_payload(decode=True) == text
    assert longest_line(result.mime) <= 76


def test_us_ascii_label_on_utf8_bytes_is_relabelled_utf8() -> None:
    # cron started without a locale labels its UTF-8 output US-ASCII.
    mime = (
        b"Subject: cron\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=US-ASCII\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + UTF8 + b"\r\n"
    )
    result = normalise(mime)
    assert result.fixed == ("charset",)
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in head(result.mime)
    assert parse(result.mime).get_content() == UTF8.decode() + "\r\n"
    latin = mime.replace(UTF8, LATIN1)
    assert b"charset=iso-8859-1" in head(normalise(latin).mime)


def test_quoted_us_ascii_label_and_other_parameters_are_kept() -> None:
    mime = multipart(
        b'Content-Type: text/plain; format=flowed; charset="us-ascii"; delsp=yes\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + UTF8
    )
    (part,) = part_payloads(normalise(mime).mime)
    assert part.get_content_charset() == "utf-8"
    assert part.get_param("format") == "flowed" and part.get_param("delsp") == "yes"


def test_part_without_headers_gets_a_content_type() -> None:
    result = normalise(multipart(b"\r\n" + UTF8))
    (part,) = part_payloads(result.mime)
    assert part.get_content_charset() == "utf-8"
    assert part.get_content() == UTF8.decode()


def test_base64_text_without_charset_gets_one() -> None:
    mime = multipart(
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(UTF8)
    )
    result = normalise(mime)
    assert result.fixed == ("charset",)
    assert part_payloads(result.mime)[0].get_content() == UTF8.decode()


def test_nested_message_rfc822_parts_are_repaired() -> None:
    inner = b"Subject: inner\r\n\r\n" + b"z" * 2000 + b"\r\n"
    mime = multipart(b"Content-Type: message/rfc822\r\n\r\n" + inner)
    result = normalise(mime)
    assert "qp" in result.fixed
    assert longest_line(result.mime) <= 76


# ---------------------------------------------------------------- headers


def test_raw_utf8_subject_becomes_encoded_words() -> None:
    subject = "Grüße aus München: 3 errors ✓ 你好"
    mime = b"Subject: " + subject.encode() + b"\r\nTo: b@example.org\r\n\r\nx\r\n"
    result = normalise(mime)
    assert result.fixed == ("rfc2047",)
    assert head(result.mime).isascii()
    assert b" aus " in result.mime and b" 3 errors " in result.mime  # ASCII words stay
    assert str(parse(result.mime)["Subject"]) == subject
    assert body(result.mime) == b"x\r\n"


def test_encoded_word_next_to_raw_text_keeps_the_space_between() -> None:
    mime = "Subject: =?utf-8?q?caf=C3=A9?= Grüße =?utf-8?q?x?=\r\n\r\n".encode()
    assert str(parse(normalise(mime).mime)["Subject"]) == "café Grüße x"


def test_latin1_subject_is_decoded_with_the_default_charset() -> None:
    mime = b"Subject: " + LATIN1 + b"\r\n\r\nx\r\n"
    assert str(parse(normalise(mime).mime)["Subject"]) == "Grüße aus Köln"


def test_display_names_are_encoded_addresses_kept() -> None:
    mime = (
        "From: Jörg Müller <joerg@example.org>\r\n"
        'To: "Ünal, A." <a@example.org>, b@example.org, Zoë <z@example.org>\r\n'
        "Cc: jörg@exämple.de\r\n\r\nx\r\n"
    ).encode()
    result = normalise(mime)
    msg = parse(result.mime)
    assert msg["From"].addresses[0].display_name == "Jörg Müller"
    assert msg["From"].addresses[0].addr_spec == "joerg@example.org"
    to = msg["To"].addresses
    assert [a.display_name for a in to] == ["Ünal, A.", "", "Zoë"]
    assert [a.addr_spec for a in to] == ["a@example.org", "b@example.org", "z@example.org"]
    # An internationalised address is never encoded: Exchange Online sends to EAI addresses.
    assert "Cc: jörg@exämple.de\r\n".encode() in result.mime


def test_display_names_are_read_by_the_projects_parser_on_every_python() -> None:
    # email.utils.getaddresses gives ('', '') for the first field on interpreters
    # with the CVE-2023-27043 fix (Debian's 3.11.2, 3.13) and splits it on
    # others; the project's parser reads it one way everywhere (issue 14).
    mime = (
        "From: Drücker printer@example.org <printer@example.org>\r\n"
        "To: b@example.org (Zoë Bär)\r\n\r\nx\r\n"
    ).encode()
    msg = parse(normalise(mime).mime)
    assert msg["From"].addresses[0].display_name == "Drücker printer@example.org"
    assert msg["From"].addresses[0].addr_spec == "printer@example.org"
    assert msg["To"].addresses[0].display_name == "Zoë Bär"
    assert msg["To"].addresses[0].addr_spec == "b@example.org"


def test_structured_and_unparsable_fields_keep_their_bytes() -> None:
    fields = [
        "Message-ID: <grüße@example.org>\r\n".encode(),
        "To: Grüße, not an address\r\n".encode(),
        "Content-Type: text/plain; charset=utf-8; name=grüße.txt\r\n".encode(),
    ]
    result = normalise(b"".join(fields) + b"\r\nx\r\n")
    for field in fields:
        assert field in result.mime


def test_invalid_bytes_that_do_not_decode_in_the_default_charset_are_left() -> None:
    field = b"X-Odd: \x81\x8d\r\n"  # undefined in windows-1252, not UTF-8
    assert normalise(field + b"\r\nx\r\n", "windows-1252").mime.startswith(field)


# ---------------------------------------------------------------- no-op and never touched


WELL_FORMED = [
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: plain\r\n\r\nhello\r\n",
    b"Subject: no body\r\n\r\n",
    b"\r\nno headers at all\r\n",
    b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + UTF8 + b"\r\n",
    multipart(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        b"\r\n\r\n" + binascii.b2a_qp("é".encode() * 500).replace(b"\n", b"\r\n"),
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(bytes(range(256)) * 50).replace(b"\n", b"\r\n"),
        b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n<p>" + LATIN1 + b"</p>",
    ),
    multipart(b"Content-Type: text/plain\r\n\r\nascii only"),
    b"Subject: =?utf-8?q?already_encoded?=\r\n\r\n" + b"y" * 998 + b"\r\n",
]


@pytest.mark.parametrize("mime", WELL_FORMED)
def test_well_formed_mime_is_returned_as_the_same_object(mime: bytes) -> None:
    result = normalise(mime)
    assert result.mime is mime and result.fixed == () and result.kept == ""


SIGNED = multipart(
    b"Content-Type: text/plain\r\n\r\n" + UTF8 + b"x" * 2000,
    b"Content-Type: application/pkcs7-signature\r\n\r\n" + b"s" * 1200,
    top=b"Subject: " + UTF8 + b"\r\n",
).replace(b"multipart/mixed", b'multipart/signed; protocol="application/pkcs7-signature"')


@pytest.mark.parametrize(
    ("mime", "why"),
    [
        (SIGNED, "signed"),
        (
            b"Subject: "
            + UTF8
            + b"\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\n"
            + b"A" * 2000,
            "signed",
        ),
        (
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=abc\r\nSubject: "
            + UTF8
            + b"\r\n\r\n"
            + UTF8
            + b"q" * 3000,
            "dkim",
        ),
    ],
)
def test_signed_encrypted_and_dkim_messages_are_never_touched(mime: bytes, why: str) -> None:
    result = normalise(mime)
    assert result.mime is mime and result.fixed == () and result.kept == why


def test_signed_part_inside_mixed_is_kept_the_rest_repaired() -> None:
    signed_part = SIGNED.split(b"\r\n", 4)[4]  # its own Content-Type onwards
    signed_part = signed_part[signed_part.index(b"Content-Type: multipart/signed") :]
    mime = multipart(signed_part.rstrip(b"\r\n"), b"\r\n" + UTF8, boundary=b"outer")
    result = normalise(mime)
    assert result.kept == "signed" and result.fixed == ("8bit", "charset")
    assert signed_part.rstrip(b"\r\n") in result.mime


# ---------------------------------------------------------------- bounds


def test_deep_nesting_is_walked_without_recursion() -> None:
    depth = 5000
    mime = b"Subject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(depth):
        mime += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    mime += b"\r\n" + b"x" * 2000
    for i in reversed(range(depth)):
        mime += b"\r\n--b%d--" % i
    started = time.monotonic()
    result = normalise(mime + b"\r\n")
    assert time.monotonic() - started < 5
    assert result.fixed == ()  # the long line is deeper than MAX_DEPTH: left as it is


def test_many_parts_stop_at_the_part_limit() -> None:
    mime = multipart(*([b"Content-Type: text/plain\r\n\r\n" + UTF8] * 2000))
    started = time.monotonic()
    result = normalise(mime)
    assert time.monotonic() - started < 5
    assert result.fixed == ("8bit", "charset")
    labelled = result.mime.count(b"charset=utf-8")
    assert 0 < labelled < 2000


def test_every_part_under_the_configured_limit_is_repaired() -> None:
    """The walk goes as far as MAX_MIME_PARTS lets a message through (it stopped at 500)."""
    mime = multipart(*([b"Content-Type: text/plain\r\n\r\n" + UTF8] * 800))
    assert normalise(mime).mime.count(b"charset=utf-8") == 800  # the default, 1000
    few = normalise(mime, max_parts=101).mime.count(b"charset=utf-8")
    assert few == 100  # the top-level multipart is the first of the 101


def test_broken_multipart_is_left_alone() -> None:
    mime = multipart(b"\r\n" + UTF8).replace(b"--b1--", b"--nope--")
    result = normalise(mime)
    assert result.mime is mime


def test_large_message_is_repaired_in_linear_time() -> None:
    line = "é".encode() * 60 + b"\r\n"
    small = b"Subject: x\r\n\r\n" + line * 10_000 + b"y" * 2000
    big = b"Subject: x\r\n\r\n" + line * 100_000 + b"y" * 2000
    started = time.monotonic()
    normalise(small)
    t_small = time.monotonic() - started
    started = time.monotonic()
    result = normalise(big)
    t_big = time.monotonic() - started
    assert parse(result.mime).get_payload(decode=True) == body(big)
    assert t_big < 40 * max(t_small, 0.001)  # 10x the input: well under quadratic


# ---------------------------------------------------------------- config and counters


def test_check_charset() -> None:
    assert check_charset("Windows-1252") == "windows-1252"
    assert check_charset("iso-8859-15") == "iso-8859-15"
    for bad in ("utf-8", "UTF8", "us-ascii", "utf-16", "no-such-charset"):
        with pytest.raises(ValueError, match="DEFAULT_CHARSET"):
            check_charset(bad)


def test_bad_default_charset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DEFAULT_CHARSET"):
        policy_for(Config({"SENDER": "relay@example.com", "DEFAULT_CHARSET": "utf-16"}))


def test_fix_counts() -> None:
    counts = FixCounts()
    counts.add(("charset", "qp"))
    counts.add(())
    counts.add(("qp",))
    assert counts.snapshot() == {"charset": 1, "qp": 2}


# ---------------------------------------------------------------- through prepare


def envelope(*rcpts: str) -> dict[str, Any]:
    return {"recipients": list(rcpts), "time": 1_700_000_000.0}


def test_prepare_reports_the_repairs_and_uses_default_charset() -> None:
    cfg = Config({"SENDER": "relay@example.com", "DEFAULT_CHARSET": "windows-1252"})
    message = b"From: root\nTo: a@example.org\nSubject: " + LATIN1 + b"\n\n" + LATIN1 + b"\n"
    result = prepare(message, envelope("a@example.org"), cfg, "q1")
    assert result.mime_fixed == ("8bit", "charset", "mime", "rfc2047")
    msg = parse(result.mime)
    assert msg.get_content_charset() == "windows-1252"
    assert str(msg["Subject"]) == "Grüße aus Köln"


# ---------------------------------------------------------------- property


SCRIPTS = st.sampled_from(
    [
        "abcxyz ABC 0123 .,;:!?-_()'/",
        "äöüßéèêçñøåłžšőЁ",
        "Приветмирёжщъ",
        "你好世界漢字かなカナ한국어",
        "👋🏽🎉🚀✓€™",
        " \t",
    ]
)
CHARS = SCRIPTS.flatmap(lambda a: st.text(alphabet=a, min_size=1, max_size=12))
LINES = st.lists(
    st.tuples(CHARS, st.integers(1, 2500)).map(lambda t: (t[0] * t[1])[:10_000]),
    min_size=1,
    max_size=6,
)
SUBJECT = (
    st.lists(CHARS, min_size=1, max_size=8)
    .map(lambda parts: " ".join(p.replace("\t", " ") for p in parts).strip())
    .filter(bool)
)
FORMS = st.sampled_from(["no-mime", "us-ascii", "utf-8-declared", "multipart", "latin-1"])


def submitted(form: str, subject: str, text: str) -> bytes | None:
    if form == "latin-1":
        try:
            raw = text.encode("latin-1")
        except UnicodeEncodeError:
            return None
    else:
        raw = text.encode()
    lines = [b"From: root", b"To: a@example.org", b"Subject: " + subject.encode()]
    if form == "us-ascii":
        lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=US-ASCII"]
    elif form == "utf-8-declared":
        lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8"]
        lines += [b"Content-Transfer-Encoding: 8bit"]
    elif form == "multipart":
        lines += [b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="=_b"']
        raw = b"--=_b\n\n" + raw + b"\n--=_b\nContent-Type: application/x-log\n\n" + raw
        raw += b"\n--=_b--"
    return b"\n".join(lines) + b"\n\n" + raw


def check_delivered(mime: bytes, subject: str, text: str) -> None:
    """The four properties of issue 16, for a prepared or delivered message."""
    msg = parse(mime)
    for part in msg.walk():
        assert not part.defects, part.defects  # 1. parses without defects
    assert longest_line(mime) <= MAX_LINE  # 2. no line over 998 octets
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    for part in leaves:
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            # 3. a declared charset; a part of 7-bit bytes alone may rely on
            # RFC 2045's us-ascii default, which is exact for it.
            assert part.get_content_charset() or payload.isascii()
    first = leaves[0].get_content()
    assert first.replace("\r\n", "\n") == text  # 4. the submitted text, body and Subject
    assert str(msg["Subject"]) == subject


@settings(max_examples=60, deadline=None)
@given(form=FORMS, subject=SUBJECT, lines=LINES)
def test_property_prepared_message_is_valid_and_decodes_to_the_submitted_text(
    form: str, subject: str, lines: list[str]
) -> None:
    text = "\n".join(lines) + "\n"
    message = submitted(form, subject, text)
    if message is None:
        return
    cfg = Config({"SENDER": "relay@example.com"})
    result = prepare(message, envelope("a@example.org"), cfg, "q1")
    check_delivered(result.mime, subject, text)


def test_large_message_path_gets_the_repairs_too() -> None:
    """Over ~3 MB the draft + upload path (graph/large.py) sends prepare()'s output."""
    from mssendmail.graph import large

    text = ("Ошибка " * 300 + "\n").encode() * 2000  # 4.8 MB of 4,200-octet lines
    cfg = Config({"SENDER": "relay@example.com"})
    message = b"From: root\nTo: a@example.org\nSubject: big\n\n" + text
    result = prepare(message, envelope("a@example.org"), cfg, "q1")
    assert result.mime_fixed == ("charset", "mime", "qp")
    assert longest_line(result.mime) <= MAX_LINE
    plan = large.plan(result.mime)
    (upload,) = plan.uploads
    decoded = b"".join(large.chunks_from(result.mime, upload.part, 0))
    assert decoded == text.replace(b"\n", b"\r\n")
    assert longest_line(plan.draft) <= MAX_LINE
