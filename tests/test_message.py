"""Address lists, the -f/-F checks and To/Cc/Bcc extraction for -t."""

from __future__ import annotations

from email.utils import getaddresses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssendmail.errors import DataError
from mssendmail.submission.addresses import (
    HeaderCollector,
    check_full_name,
    header_fields,
    parse_address_list,
    parse_sender,
)


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("root", ["root"]),
        ("alice@example.com", ["alice@example.com"]),
        ("alice@x,bob@y", ["alice@x", "bob@y"]),
        (" alice@x , , bob@y ,", ["alice@x", "bob@y"]),
        ("Bob <bob@example.com>", ["bob@example.com"]),
        ("<bob@example.com>", ["bob@example.com"]),
        ('"Doe, John" <j@x.org>, k@y', ["j@x.org", "k@y"]),
        ('"a \\" quote" <q@x>', ["q@x"]),
        ("John Q. Public <jqp@x>", ["jqp@x"]),
        ("a@x (a comment, with comma)", ["a@x"]),
        ("a@x (nested (comment))", ["a@x"]),
        ("friends: a@x, B <b@y>;, c@z", ["a@x", "b@y", "c@z"]),
        ("undisclosed-recipients:;", []),
        ('"q u"@x.org', ['"q u"@x.org']),
        ("x@[192.0.2.1]", ["x@[192.0.2.1]"]),
        ("first.last@sub.example.co.uk", ["first.last@sub.example.co.uk"]),
        ("user+tag@x", ["user+tag@x"]),
        ("jörg@bücher.de", ["jörg@bücher.de"]),
        ("=?utf-8?q?J=C3=B6rg?= <j@x>", ["j@x"]),
        ("root (Cron Daemon)", ["root"]),
        ("a@x\r\n\tb@y".replace("\r\n\t", ", "), ["a@x", "b@y"]),
    ],
)
def test_parse_address_list(text: str, addresses: list[str]) -> None:
    assert parse_address_list(text) == addresses


@pytest.mark.parametrize(
    "text",
    [
        "a b c",  # email.utils would silently return just "a"
        "a@x b@y",  # ... and this as "@y"
        "a@b@c",
        "foo@",
        "@x",
        "<>",
        "A <a@x",
        "a@x>",
        "a@x.",
        "a@.x",
        "a@x (unclosed",
        "<<<",
        "a@x\0",
        "tab\x01@x",
        "x" * 990 + "@" + "y" * 10,
    ],
)
def test_unparsable_addresses_name_the_text(text: str) -> None:
    with pytest.raises(DataError) as info:
        parse_address_list(text)
    assert "\n" not in str(info.value)


def test_invalid_utf8_is_reported() -> None:
    bad = b"caf\xe9@x".decode("utf-8", "surrogateescape")
    with pytest.raises(DataError, match="UTF-8"):
        parse_address_list(bad)


# Well-formed address lists, generated: the parser must agree with the stdlib.
_atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_+", min_size=1, max_size=8)
_domain = st.lists(_atom, min_size=1, max_size=3).map(".".join)
_addr = st.builds(lambda local, dom: f"{local}@{dom}", _atom, _domain) | _atom
_name = st.text(alphabet="ABCdef xyz,.;:@<>()", min_size=1, max_size=12).map(
    lambda n: '"' + n.replace("\\", "").replace('"', "") + '"'
) | st.lists(_atom, min_size=1, max_size=3).map(" ".join)
_mailbox = st.one_of(
    _addr,
    st.builds(lambda n, a: f"{n} <{a}>", _name, _addr),
    st.builds(lambda a, c: f"{a} ({c})", _addr, st.text(alphabet="abc ,", max_size=6)),
)


@given(st.lists(_mailbox, min_size=1, max_size=6))
def test_agrees_with_email_utils_on_well_formed_lists(mailboxes: list[str]) -> None:
    text = ", ".join(mailboxes)
    expected = [addr for _, addr in getaddresses([text])]
    assert parse_address_list(text) == expected


@given(st.text(max_size=40))
def test_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        result = parse_address_list(text)
    except DataError as exc:
        assert "\n" not in str(exc).replace("\\n", "")
    else:
        for addr in result:
            assert addr and not any(c in addr for c in "\r\n\0")


@pytest.mark.parametrize(
    ("value", "sender"),
    [
        ("me@x.org", "me@x.org"),
        ("<me@x.org>", "me@x.org"),
        ("Me <me@x.org>", "me@x.org"),
        ("<>", ""),
        ("", ""),
        ("www-data", "www-data"),
    ],
)
def test_parse_sender(value: str, sender: str) -> None:
    assert parse_sender(value) == sender


@pytest.mark.parametrize(
    "value",
    ["me@x\nBcc: evil@y", "me@x\r", "me\0@x", "a@x, b@y", "a b"],
)
def test_bad_senders(value: str) -> None:
    with pytest.raises(DataError):
        parse_sender(value)


def test_full_name_checks() -> None:
    assert check_full_name("Cron Daemon") == "Cron Daemon"
    for bad in ("a\nBcc: x@y", "a\rb", "a\0", "x" * 201):
        with pytest.raises(DataError):
            check_full_name(bad)


NAMES = (b"to", b"cc", b"bcc")


def test_every_occurrence_and_folding() -> None:
    section = (
        b"From: a@x\r\n"
        b"To: one@x,\r\n"
        b"\ttwo@x\r\n"
        b"Subject: to: not@this\r\n"
        b"TO: three@x\r\n"
        b"cc: four@x\r\n"
        b"Bcc: five@x\r\n"
        b"To: six@x\r\n"
        b"\r\n"
        b"To: body@x\r\n"
    )
    fields, ended = header_fields(section, NAMES)
    assert ended
    assert [name for name, _ in fields] == ["to", "to", "cc", "bcc", "to"]
    assert fields[0][1] == "one@x,\ttwo@x"


def test_mbox_from_line_and_non_header_line() -> None:
    fields, ended = header_fields(b"From root Mon Jan 1\nTo: a@x\nnot a header\nTo: b@x\n", NAMES)
    assert fields == [("to", "a@x")] and ended


def test_leading_continuation_ignored_and_no_blank_line() -> None:
    fields, _ = header_fields(b"  stray\nTo: a@x\nCc: b@x", NAMES)  # EOF, no newline
    assert fields == [("to", "a@x"), ("cc", "b@x")]


def _collect(chunks: list[bytes], limit: int = 1 << 20) -> list[str]:
    collector = HeaderCollector(limit)
    for chunk in chunks:
        collector.feed(chunk)
    return collector.recipients()


def test_collector_across_chunks() -> None:
    msg = b"To: a@x\nCc: B <b@y>\n\nTo: c@z\n"
    for split in range(len(msg) + 1):
        assert _collect([msg[:split], msg[split:]]) == ["a@x", "b@y"]


def test_collector_empty_header_section() -> None:
    assert _collect([b"\nTo: a@x\n"]) == []
    assert _collect([b"\r\nTo: a@x\n"]) == []


def test_collector_limit() -> None:
    big = b"To: a@x\n" + b"X-Pad: " + b"p" * 200 + b"\n"
    with pytest.raises(DataError, match="header section is larger"):
        _collect([big], limit=100)
    # The limit only matters while the section lasts.
    assert _collect([b"To: a@x\n\n" + b"b" * 500], limit=100) == ["a@x"]


def test_collector_names_the_bad_header() -> None:
    with pytest.raises(DataError, match=r"Cc: header.*'a b c'"):
        _collect([b"To: ok@x\nCc: a b c\n\n"])


def test_non_utf8_header_address_is_a_data_error() -> None:
    with pytest.raises(DataError, match="UTF-8"):
        _collect([b"To: caf\xe9@x\n\n"])
