"""Alias file parsing and the resolution order for bare local names."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mssendmail.delivery.aliases import AliasFile, Resolver, parse
from mssendmail.errors import ConfigError

ALIASES = """\
# /etc/aliases
postmaster: root
root: alice@example.com,
  bob@example.com
www-data: root
# a comment between entries
ops: "carol@example.com", \\root, dave
dave: dave@example.org
loop1: loop2
loop2: loop1
self: self, erin@example.com
nobody: /dev/null
pipe: "|/usr/bin/procmail -a x,y", frank@example.com
inc: :include:/etc/mail/list
Upper: upper@example.com
"""


def resolver(text: str | None = ALIASES, admin: str = "", hosts: tuple[str, ...] = ()) -> Resolver:
    table = parse(text) if text is not None else None
    return Resolver(
        local_domain="corp.example", admin_address=admin, aliases=table, local_hosts=hosts
    )


def test_parse_entries_continuations_and_comments() -> None:
    table = parse(ALIASES)
    assert table.entries["root"] == ("alice@example.com", "bob@example.com")
    assert table.entries["ops"] == ("carol@example.com", "\\root", "dave")
    assert "upper" in table.entries and "Upper" not in table.entries


def test_parse_ignores_pipes_files_and_includes_with_warnings() -> None:
    table = parse(ALIASES, "aliases")
    assert table.entries["nobody"] == ()
    assert table.entries["pipe"] == ("frank@example.com",)
    assert table.entries["inc"] == ()
    text = "\n".join(table.warnings)
    assert "pipe to a command" in text and "procmail" in text
    assert "file target '/dev/null'" in text
    assert ":include: file" in text


def test_parse_bad_and_duplicate_lines_are_warnings() -> None:
    table = parse("root alice@example.com\nroot: a@example.com\nroot: b@example.com\n")
    assert table.entries == {"root": ("a@example.com",)}
    assert len(table.warnings) == 2


def test_alias_expands_recursively() -> None:
    r = resolver(ALIASES)
    assert r.resolve("postmaster") == ["alice@example.com", "bob@example.com"]
    assert r.resolve("www-data") == ["alice@example.com", "bob@example.com"]
    assert r.resolve("UPPER") == ["upper@example.com"]


def test_backslash_name_is_not_expanded() -> None:
    r = resolver(ALIASES, admin="admin@example.com")
    assert r.resolve("ops") == ["carol@example.com", "admin@example.com", "dave@example.org"]


def test_loop_falls_back_instead_of_hanging() -> None:
    r = resolver(ALIASES)
    assert r.resolve("loop1") == ["loop1@corp.example"]
    assert r.resolve("self") == ["self@corp.example", "erin@example.com"]


def test_diamond_is_expanded_once() -> None:
    text = "a: b, c\nb: d\nc: d\nd: x@example.com, y@example.com\n"
    assert resolver(text).resolve("a") == ["x@example.com", "y@example.com"]


def test_exponential_alias_file_terminates() -> None:
    # 3**25 paths: only expanding each name once per resolve() makes this finish.
    lines = [f"n{i}: n{i + 1}, n{i + 1}, n{i + 1}" for i in range(25)]
    r = resolver("\n".join(lines) + "\nn25: end@example.com\n")
    assert r.resolve("n0") == ["end@example.com"]


def test_depth_limit_falls_back() -> None:
    lines = [f"n{i}: n{i + 1}" for i in range(100)]
    r = resolver("\n".join(lines) + "\nn100: end@example.com\n", admin="admin@example.com")
    assert r.resolve("n0") == ["admin@example.com"]


def test_resolution_order() -> None:
    with_default = ALIASES + "default: catchall@example.com\n"
    assert resolver(with_default, admin="admin@example.com").resolve("joe") == [
        "catchall@example.com"
    ]
    assert resolver(ALIASES, admin="admin@example.com").resolve("joe") == ["admin@example.com"]
    assert resolver(ALIASES).resolve("joe") == ["joe@corp.example"]
    assert resolver(None).resolve("joe") == ["joe@corp.example"]
    # An entry beats default:, default: beats ADMIN_ADDRESS.
    assert resolver(with_default, admin="admin@example.com").resolve("dave") == ["dave@example.org"]


def test_default_pointing_at_unknown_name_does_not_loop() -> None:
    r = resolver("default: nosuch\n", admin="admin@example.com")
    assert r.resolve("joe") == ["admin@example.com"]


def test_qualified_addresses_pass_unchanged() -> None:
    r = resolver(ALIASES, admin="admin@example.com")
    assert r.resolve("Root@Example.COM") == ["Root@Example.COM"]
    assert not r.needs_resolving("root@example.com")


def test_this_host_domains_are_local() -> None:
    r = resolver(ALIASES, hosts=("localhost", "web1.corp.example", "web1"))
    assert r.resolve("dave@localhost") == ["dave@example.org"]
    assert r.resolve("dave@WEB1.corp.example") == ["dave@example.org"]
    assert r.resolve("dave@web1") == ["dave@example.org"]
    assert r.resolve("dave@web2") == ["dave@web2"]


def test_local_domain_is_never_a_host_name() -> None:
    r = Resolver(local_domain="corp.example", aliases=parse(ALIASES), local_hosts=["corp.example"])
    assert r.resolve("dave@corp.example") == ["dave@corp.example"]


def test_empty_expansion_is_empty() -> None:
    assert resolver(ALIASES).resolve("nobody") == []


def test_resolve_all_deduplicates_case_insensitively() -> None:
    r = resolver(ALIASES)
    assert r.resolve_all(["root", "ALICE@example.com", "postmaster", "x@example.net"]) == [
        "alice@example.com",
        "bob@example.com",
        "x@example.net",
    ]


def test_every_result_is_qualified() -> None:
    r = resolver(ALIASES)
    for name in ("root", "ops", "loop1", "self", "joe", "\\root", "pipe", "inc", "www-data"):
        assert all("@" in a for a in r.resolve(name)), name


def test_bad_config_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ADMIN_ADDRESS"):
        Resolver(local_domain="corp.example", admin_address="root")
    with pytest.raises(ConfigError, match="LOCAL_DOMAIN"):
        Resolver(local_domain="x@corp.example")


def test_alias_file_reloads_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("root: one@example.com\n")
    r = Resolver(local_domain="corp.example", aliases=AliasFile(str(path)), local_hosts=())
    assert r.resolve("root") == ["one@example.com"]
    path.write_text("root: two@example.com, three@example.com\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert r.resolve("root") == ["two@example.com", "three@example.com"]


def test_alias_file_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "aliases"
    path.write_text("root: |/bin/cat, a@example.com\n")
    with caplog.at_level(logging.WARNING, logger="mssendmail.delivery.aliases"):
        AliasFile(str(path)).table()
    assert "pipe to a command" in caplog.text and str(path) in caplog.text


def test_missing_alias_file_is_config_error(tmp_path: Path) -> None:
    r = Resolver(local_domain="corp.example", aliases=AliasFile(str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="ALIASES"):
        r.resolve("root")
