"""Address lists, the -f/-F checks and To/Cc/Bcc extraction for -t."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssendmail.errors import DataError
from mssendmail.submission.addresses import (
    HeaderCollector,
    check_full_name,
    header_fields,
    parse_address_list,
    parse_mailboxes,
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


# The project's own answers, pinned: the same on every interpreter, whatever
# its email.utils says (that changed within patch releases: CVE-2023-27043).
TABLE: list[tuple[str, list[tuple[str, str]]]] = [
    ("root", [("", "root")]),
    ("alice@example.com", [("", "alice@example.com")]),
    ("Bob <bob@example.com>", [("Bob", "bob@example.com")]),
    ("<bob@example.com>", [("", "bob@example.com")]),
    ('"Doe, John" <j@x.org>', [("Doe, John", "j@x.org")]),
    ('"a \\" quote" <q@x>', [('a " quote', "q@x")]),
    ('"" <a@x>', [("", "a@x")]),
    ("John Q. Public <jqp@x>", [("John Q. Public", "jqp@x")]),
    ("John(x)Doe <a@x>", [("John Doe", "a@x")]),
    ("Jörg Müller <jorg@other.example>", [("Jörg Müller", "jorg@other.example")]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x>", [("=?utf-8?q?J=C3=B6rg?=", "j@x")]),
    ("a@x (a comment, with comma)", [("a comment, with comma", "a@x")]),
    ("a@x (nested (comment))", [("nested (comment)", "a@x")]),
    ("a@x (one) ( two )", [("one two", "a@x")]),
    ("(lead) a@x", [("lead", "a@x")]),
    ("Bob <bob@x> (work)", [("Bob", "bob@x")]),
    ("<bob@x> (work)", [("work", "bob@x")]),
    ("root (Cron Daemon)", [("Cron Daemon", "root")]),
    ("0@0", [("", "0@0")]),
    ("0 (,)", [(",", "0")]),  # hypothesis's find on Debian's 3.11.2 (issue 14)
    # Printers: an unquoted address as display name (Graph refuses it; prepare drops it).
    ("printer@example.org <printer@example.org>", [("printer@example.org", "printer@example.org")]),
    ('"scan@example.org" <printer@example.org>', [("scan@example.org", "printer@example.org")]),
    ("Name [Dept] <a@x>", [("Name [Dept]", "a@x")]),
    ("friends: a@x, B <b@y>;", [("", "a@x"), ("B", "b@y")]),
    ("undisclosed-recipients:;", []),
    ('"q u"@x.org', [("", '"q u"@x.org')]),
    ("x@[192.0.2.1]", [("", "x@[192.0.2.1]")]),
    ("first.last@sub.example.co.uk", [("", "first.last@sub.example.co.uk")]),
    ("user+tag@x", [("", "user+tag@x")]),
    ("jörg@bücher.de", [("", "jörg@bücher.de")]),
]


@pytest.mark.parametrize(("text", "pairs"), TABLE)
def test_mailboxes_table(text: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_mailboxes(text) == pairs


@given(
    st.lists(st.sampled_from(TABLE), min_size=1, max_size=6),
    st.sampled_from([", ", ",", " ,\r\n\t", " , , "]),
)
def test_lists_of_table_entries(entries: list[tuple[str, list[tuple[str, str]]]], sep: str) -> None:
    text = sep.join(entry for entry, _ in entries)
    assert parse_mailboxes(text) == [pair for _, pairs in entries for pair in pairs]


# Well-formed mailboxes, generated with the answer they must give: no
# reference parser is consulted, the expected result is built alongside.
_atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_+", min_size=1, max_size=8)
_domain = st.lists(_atom, min_size=1, max_size=3).map(".".join)
_addr = st.builds(lambda local, dom: f"{local}@{dom}", _atom, _domain) | _atom
_quoted_name = st.text(alphabet="ABCdef xyz,.;:@<>()", min_size=1, max_size=12)
_words = st.lists(_atom, min_size=1, max_size=3).map(" ".join)
_mailbox = st.one_of(
    _addr.map(lambda a: (a, ("", a))),
    st.builds(lambda n, a: (f'"{n}" <{a}>', (n, a)), _quoted_name, _addr),
    st.builds(lambda n, a: (f"{n} <{a}>", (n, a)), _words, _addr),
    st.builds(lambda a, c: (f"{a} ({c})", (c.strip(), a)), _addr, st.text("abc ,", max_size=6)),
)


@given(st.lists(_mailbox, min_size=1, max_size=6))
def test_generated_well_formed_lists(mailboxes: list[tuple[str, tuple[str, str]]]) -> None:
    text = ", ".join(t for t, _ in mailboxes)
    assert parse_mailboxes(text) == [pair for _, pair in mailboxes]
    assert parse_address_list(text) == [addr for _, (_, addr) in mailboxes]


_any_name = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)


@given(st.lists(st.tuples(_any_name, _addr), min_size=1, max_size=4))
def test_quoted_display_names_round_trip(pairs: list[tuple[str, str]]) -> None:
    quote = lambda n: n.replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
    text = ", ".join(f'"{quote(n)}" <{a}>' for n, a in pairs)
    assert parse_mailboxes(text) == pairs


def test_deep_comments_need_no_recursion() -> None:
    # Comments nest through a counter, never the stack (issue 12: 600 levels).
    depth = 600
    inner = "(" * (depth - 1) + ")" * (depth - 1)
    assert parse_mailboxes("a@x " + "(" * depth + ")" * depth) == [(inner, "a@x")]
    with pytest.raises(DataError, match="unbalanced"):
        parse_mailboxes("a@x " + "(" * depth)


def test_group_name_is_a_strict_phrase() -> None:
    with pytest.raises(DataError):
        parse_mailboxes("a@x: b@y;")


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
