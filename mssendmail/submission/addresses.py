"""Addresses and the header section, as submission needs them.

Three jobs, all on the submission fast path:

* ``parse_mailboxes`` / ``parse_address_list``: RFC 5322 address lists
  (display names, quoted strings, comments, groups, comma lists in one argv
  argument, bare local names such as ``root``) to (display name, addr-spec)
  pairs or bare addr-specs, refusing anything it cannot read completely.
  delivery/prepare.py reads From, To, Cc, Bcc and Sender with it too, so
  submission and delivery share one set of rules.
* ``parse_sender``: the one address of ``-f``/``-r`` (``<>`` is the null sender).
* ``HeaderCollector``: keeps the header section of a streamed message (up to
  HEADER_LIMIT) and yields every To:, Cc: and Bcc: occurrence for ``-t``.

The rules are the project's own, the same on every Python:

* An address is an addr-spec (``local@domain`` or a domain literal), or a
  bare local name that delivery resolves through ALIASES. Two words in a row
  (``a b c``) are a typo, refused, never glued or truncated.
* The display name is the phrase before ``<...>``, quoted strings unquoted,
  words joined as written. Before an angle address it may also hold ``@``,
  ``.`` and domain literals (``printer@example.org <printer@example.org>``):
  the brackets say which part is the address. Without a phrase, the
  mailbox's comments are its name (cron's ``root (Cron Daemon)``).
* Groups (``friends: a@x, b@y;``) give their members; the group name goes.

Why not ``email.utils.getaddresses``/``parseaddr``: their answers depend on
the interpreter's patch level. The CVE-2023-27043 fix (3.13, and backports
such as Debian 12's 3.11.2) made them return ``('', '')`` for whole fields
they once split (``printer@x <printer@x>``: from two copies of the address
to none); a build without the fix (3.9.18, 3.11.7) silently drops what it cannot
read: ``"a b c"`` becomes ``a`` and ``"a@x b@y"`` becomes ``@y``, so a typo
would send mail to the wrong place instead of failing with exit 65. Their
import also costs 4.3 ms (``email.utils``: 20 ms) of the ~18 ms that the
whole submission may spend above bare interpreter start-up. The parser below
has no imports at all, and no recursion: comments nest through a counter.
tests/test_message.py pins its answers in a fixed table on every interpreter.

Header parsing follows ``email.feedparser``: an optional mbox ``From `` first
line, ``Name:`` field lines and folded continuations; the first other line
(usually the empty one) ends the section. Values are decoded as UTF-8
(RFC 6532) with surrogateescape, so stray 8-bit bytes are reported, not
fatal to the parser. No imports beyond errors: this is the fast path.
"""

from __future__ import annotations

from mssendmail.errors import DataError

# The largest header section -t reads. Exchange Online refuses headers over
# 256 KB, so a larger section could never be sent anyway.
HEADER_LIMIT = 1024 * 1024
MAX_ADDRESS = 998  # the record's field limit; RFC 5321 paths are far shorter
RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")

# Characters that end an atom. Atoms allow 8-bit text (RFC 6531/6532),
# never controls, and none of the specials.
_ATOM_STOP = frozenset("".join(map(chr, range(0x21))) + '\x7f()<>[]:;@\\,."')
_SPECIALS = frozenset("<>@,;:.")
_WHITESPACE = frozenset(" \t\r\n")
# Field names: printable ASCII but ":" (RFC 5322 ftext), as email.feedparser.
_FIELD_NAME = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))

# (kind, text, spaced): kind is "quoted", "literal", "atom", "comment" or the
# special itself; spaced says white space or a comment came before it, so a
# display name keeps its word breaks ("John Q. Public").
Token = tuple[str, str, bool]
Mailbox = tuple[str, str]  # (display name, addr-spec); the name may be ""


def _skip_comment(text: str, pos: int) -> int:
    """The index after the comment opening at text[pos] (comments nest; a counter, no recursion)."""
    depth = 0
    i = pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise DataError(f"unbalanced parenthesis in {text!r}")


def _skip_quoted(text: str, pos: int, close: str) -> int:
    """The index after the quoted string or domain literal opening at text[pos]."""
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] not in "\r\n":
            i += 2
            continue
        if char == close:
            return i + 1
        if char in "\r\n" or (close == "]" and char == "["):
            break
        i += 1
    raise DataError(f"unclosed {text[pos]} in {text!r}")


def tokenize(text: str) -> list[Token]:
    """RFC 5322 tokens; white space is dropped, comments are kept (a display name may be one).

    A plain loop, not a regular expression: compiling one costs ~0.6 ms at
    every start, more than scanning any real header takes.
    """
    tokens: list[Token] = []
    pos = 0
    spaced = False
    while pos < len(text):
        char = text[pos]
        start = pos
        if char in _WHITESPACE:
            pos += 1
            spaced = True
            continue
        if char == "(":
            pos = _skip_comment(text, pos)
            tokens.append(("comment", text[start:pos], spaced))
            spaced = True
            continue
        if char in '"[':
            pos = _skip_quoted(text, pos, '"' if char == '"' else "]")
            kind = "quoted" if char == '"' else "literal"
        elif char in _SPECIALS:
            pos += 1
            kind = char
        elif char in _ATOM_STOP:
            raise DataError(f"unexpected character {char!r} in {text!r}")
        else:
            pos += 1
            while pos < len(text) and text[pos] not in _ATOM_STOP:
                pos += 1
            kind = "atom"
        tokens.append((kind, text[start:pos], spaced))
        spaced = False
    return tokens


def _unquote(text: str) -> str:
    """The content of a quoted string or comment: delimiters off, quoted-pairs resolved."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


# What a display name may hold. Before an angle address, "@" and domain
# literals are read as text too: printers and scanners send
# "From: printer@example.org <printer@example.org>", and the <...> leaves no
# doubt which part is the address. A group's name stays an RFC 5322 phrase.
_PHRASE = ("atom", "quoted", ".")
_LOOSE_PHRASE = (*_PHRASE, "@", "literal")


class _Parser:
    """One address list, read left to right; loops only, so nesting costs no stack."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[Token] = []
        # Comments by the index of the token they precede: a mailbox without a
        # phrase takes its comments as display name ("root (Cron Daemon)").
        self.comments: dict[int, list[str]] = {}
        for token in tokenize(text):
            if token[0] == "comment":
                self.comments.setdefault(len(self.tokens), []).append(_unquote(token[1]))
            else:
                self.tokens.append(token)
        self.pos = 0

    def peek(self) -> str:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else ""

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            found = self.tokens[self.pos][1] if self.pos < len(self.tokens) else "end of text"
            want = {"atom": "a name", "quoted": "a name"}.get(kind, repr(kind))
            raise DataError(f"cannot parse address {self.text!r}: expected {want}, found {found!r}")
        value = self.tokens[self.pos][1]
        self.pos += 1
        return value

    def error(self, why: str) -> DataError:
        return DataError(f"cannot parse address {self.text!r}: {why}")

    def address_list(self) -> list[Mailbox]:
        result: list[Mailbox] = []
        while self.peek():
            if self.peek() == ",":  # empty elements ("a, , b") are harmless
                self.pos += 1
                continue
            result.extend(self.address())
            if self.peek() not in ("", ","):
                raise self.error(f"unexpected {self.tokens[self.pos][1]!r}")
        return result

    def _ahead(self) -> str:
        """'<' (name-addr), ':' (group) or '' (addr-spec): the first of them before ',' or ';'."""
        for kind, _, _ in self.tokens[self.pos :]:
            if kind in ("<", ":"):
                return kind
            if kind in (",", ";"):
                break
        return ""

    def address(self) -> list[Mailbox]:
        if self._ahead() == ":":
            return self.group()
        return [self.mailbox()]

    def group(self) -> list[Mailbox]:
        self.phrase(_PHRASE)
        self.take(":")
        members: list[Mailbox] = []
        while self.peek() not in ("", ";"):
            if self.peek() == ",":
                self.pos += 1
                continue
            members.append(self.mailbox())
            if self.peek() not in ("", ",", ";"):
                raise self.error(f"unexpected {self.tokens[self.pos][1]!r} in group")
        if self.peek() == ";":
            self.pos += 1
        return members

    def phrase(self, kinds: tuple[str, ...]) -> str:
        """A display name as text: words joined as written, quoted strings unquoted."""
        if self.peek() not in ("atom", "quoted"):
            raise self.error("expected a display name")
        words: list[str] = []
        while self.peek() in kinds:
            kind, text, spaced = self.tokens[self.pos]
            if words and spaced:
                words.append(" ")
            words.append(_unquote(text) if kind == "quoted" else text)
            self.pos += 1
        return "".join(words)

    def mailbox(self) -> Mailbox:
        start = self.pos
        name = ""
        if self._ahead() == "<":
            if self.peek() != "<":
                name = self.phrase(_LOOSE_PHRASE)
            self.take("<")
            if self.peek() == ">":
                raise self.error("empty address <>")
            spec = self.addr_spec()
            self.take(">")
        else:
            spec = self.addr_spec()
        if not name:
            found = (
                c.strip() for i in range(start, self.pos + 1) for c in self.comments.get(i, ())
            )
            name = " ".join(c for c in found if c)
        return name, spec

    def addr_spec(self) -> str:
        # word *("." word); runs of dots are tolerated (obs-local-part, seen in
        # the wild), two words in a row are not: "a b c" is a typo, not "abc".
        local: list[str] = []
        while self.peek() in ("atom", "quoted", "."):
            kind, text, _ = self.tokens[self.pos]
            if kind != "." and local and local[-1] != ".":
                raise self.error(f"unexpected {text!r} after {local[-1]!r}")
            local.append(text)
            self.pos += 1
        if not local or all(part == "." for part in local):
            raise self.error("missing the part before @")
        if self.peek() != "@":
            return _checked("".join(local), self.text)
        self.pos += 1
        if self.peek() == "literal":
            domain = self.take("literal")
        else:
            labels = [self.take("atom")]
            while self.peek() == ".":
                self.pos += 1
                if self.peek() != "atom":
                    raise self.error("domain ends in a dot or has an empty label")
                labels.append(self.take("atom"))
            domain = ".".join(labels)
        return _checked("".join(local) + "@" + domain, self.text)


def _checked(spec: str, text: str) -> str:
    if len(spec) > MAX_ADDRESS:
        raise DataError(f"address {spec[:60]!r}... is longer than {MAX_ADDRESS} characters")
    if any("\udc80" <= char <= "\udcff" for char in spec):
        raise DataError(f"address in {text!r} is not valid UTF-8")
    return spec


def parse_mailboxes(text: str) -> list[Mailbox]:
    """(display name, addr-spec) of each mailbox in an address list, group names dropped.

    DataError (exit 65 at submission) names what it cannot read; nothing is
    guessed or silently skipped, on any Python version.
    """
    if "\0" in text:
        raise DataError(f"address {text!r} contains a NUL byte")
    return _Parser(text).address_list()


def parse_address_list(text: str) -> list[str]:
    """The addr-specs of an address list; DataError (exit 65) names what it cannot read."""
    return [spec for _, spec in parse_mailboxes(text)]


def parse_sender(value: str) -> str:
    """The -f/-r envelope sender: one address, or '' for the null sender <>."""
    if any(char in value for char in "\r\n\0"):
        raise DataError(f"sender {value!r} contains a line break or NUL; pass a plain address")
    stripped = value.strip()
    if stripped in ("", "<>"):
        return ""
    addresses = parse_address_list(stripped)
    if len(addresses) != 1:
        raise DataError(f"sender {value!r} must be exactly one address")
    return addresses[0]


def check_full_name(value: str) -> str:
    """The -F full name, refused when it could inject a header line."""
    if any(char in value for char in "\r\n\0"):
        raise DataError(f"full name {value!r} contains a line break or NUL; pass plain text")
    if len(value) > 200:
        raise DataError("full name (-F) is longer than 200 characters; shorten it")
    if any("\udc80" <= char <= "\udcff" for char in value):
        raise DataError(f"full name {value!r} is not valid UTF-8; pass UTF-8 text")
    return value


def header_fields(section: bytes, names: tuple[bytes, ...]) -> tuple[list[tuple[str, str]], bool]:
    """([(lower-case name, unfolded value)] for the named fields, whether the section ended).

    ``section`` is the start of a message (or all of it); parsing stops at the
    first line that is neither a field nor a continuation, normally the empty
    line before the body.
    """
    fields: list[tuple[str, str]] = []
    current: list[bytes] | None = None
    current_name = ""
    ended = False
    for index, raw in enumerate(section.split(b"\n")):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if index == 0 and line.startswith(b"From "):
            continue  # an mbox separator, as email.feedparser allows
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue  # a continuation with no field before it is ignored
        if current is not None:
            fields.append((current_name, _decode(current)))
            current = None
        colon = line.find(b":")
        if colon <= 0 or line[:colon].translate(None, _FIELD_NAME):
            ended = True
            break
        name, _, value = line.partition(b":")
        if name.lower() in names:
            current_name = name.decode("ascii").lower()
            current = [value]
    if current is not None:
        fields.append((current_name, _decode(current)))
    return fields, ended


def _decode(parts: list[bytes]) -> str:
    """An unfolded field value: the line breaks of folding go, the whitespace stays."""
    return b"".join(parts).decode("utf-8", "surrogateescape").strip()


class HeaderCollector:
    """Buffers the start of a streamed message until its header section is complete."""

    def __init__(self, limit: int = HEADER_LIMIT) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        start = max(0, len(self.buffer) - 2)
        self.buffer += data[: self.limit + 1 - len(self.buffer)]
        self.done = (
            self.buffer[:1] == b"\n"
            or self.buffer[:2] == b"\r\n"
            or self.buffer.find(b"\n\n", start) >= 0
            or self.buffer.find(b"\n\r\n", start) >= 0
            or len(self.buffer) > self.limit
        )

    def recipients(self) -> list[str]:
        """Every address in every To:, Cc: and Bcc: field (call after the last feed)."""
        fields, ended = header_fields(bytes(self.buffer), RECIPIENT_FIELDS)
        if not ended and len(self.buffer) > self.limit:
            raise DataError(
                f"the header section is larger than {self.limit} bytes; "
                "Exchange Online refuses such messages, so send a smaller header"
            )
        found: list[str] = []
        for name, value in fields:
            try:
                found.extend(parse_address_list(value))
            except DataError as exc:
                where = name.capitalize()
                raise DataError(f"in the {where}: header: {exc}; fix the address") from None
        return found
