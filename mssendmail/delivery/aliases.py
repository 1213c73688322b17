"""Bare local names (``root``, ``www-data``) to real addresses, /etc/aliases style.

Graph must never see an unqualified address: Exchange would bounce it or, worse,
deliver it to a mailbox of the same name in the tenant. So every recipient that
has no domain, or whose domain is this host (``root@localhost``,
``root@<hostname>``), goes through, in order:

1. the ``ALIASES`` file: an entry for the name, expanded recursively;
2. its catch-all ``default:`` entry;
3. ``ADMIN_ADDRESS``;
4. the name qualified with ``LOCAL_DOMAIN`` (default: SENDER's domain).

File syntax, as /etc/aliases: ``name: target, target``; a line starting with
white space continues the previous entry; ``#`` starts a comment line; names are
case-insensitive. Targets are addresses or other names. ``\\name`` means "this
name itself, do not expand further" and goes straight to steps 3-4.
``:include:`` files, ``|command`` pipes and ``/file`` targets make no sense for a
relay without local delivery: they are ignored with a logged warning.

Loops (``root: admin``, ``admin: root``) are broken where a name reappears on its
own expansion path; that name then falls back to steps 3-4, which is what
sendmail does for ``root: root, other@x`` (deliver "locally" plus other).

The file is re-read when its mtime or size changes, so ``newaliases`` is not
needed. A file that is configured but cannot be read is a ConfigError: guessing
where mail for root should go would misroute it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from mssendmail.errors import ConfigError
from mssendmail.logs import kv

log = logging.getLogger(__name__)

DEFAULT_KEY = "default"
MAX_DEPTH = 32  # deeper than any sane alias chain; guards against pathological files
MAX_EXPANSION = 1000  # Exchange allows at most 1000 recipients per message anyway
LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class AliasTable:
    """Parsed entries: lower-case name -> targets as written (ignored kinds removed)."""

    entries: dict[str, tuple[str, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _split_targets(text: str) -> list[str]:
    """Comma-separated targets; commas inside double quotes (``"|cmd a,b"``) do not split."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _ignored_kind(target: str) -> str | None:
    """Why a target cannot be delivered by a relay, or None if it is an address or a name."""
    bare = _unquote(target)
    if bare.lower().startswith(":include:"):
        return ":include: file"
    if bare.startswith("|"):
        return "pipe to a command"
    if bare.startswith("/"):
        return "file"
    return None


def parse(text: str, source: str = "aliases") -> AliasTable:
    """Parse /etc/aliases text; problems become warnings, never errors."""
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t" and logical:
            first, previous = logical[-1]
            logical[-1] = (first, previous + " " + stripped)
        else:
            logical.append((number, stripped))

    entries: dict[str, tuple[str, ...]] = {}
    warnings: list[str] = []
    for number, entry in logical:
        name, sep, rest = entry.partition(":")
        name = _unquote(name.strip()).lower()
        where = f"{source}:{number}"
        if not sep or not name or any(c.isspace() for c in name):
            warnings.append(f"{where}: not 'name: targets', line ignored")
            continue
        if name in entries:
            warnings.append(f"{where}: duplicate entry for {name!r} ignored (the first one counts)")
            continue
        targets: list[str] = []
        for target in _split_targets(rest):
            kind = _ignored_kind(target)
            if kind is not None:
                warnings.append(f"{where}: {name}: {kind} target {target!r} ignored")
            else:
                targets.append(_unquote(target))
        entries[name] = tuple(targets)
    return AliasTable(entries, tuple(warnings))


class AliasFile:
    """An aliases file, re-parsed whenever it changes on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        # One attribute, replaced whole: worker threads may call table() at once.
        self._cached: tuple[tuple[int, int, int], AliasTable] | None = None

    def table(self) -> AliasTable:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._cached
            if cached is not None and cached[0] == stamp:
                return cached[1]
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read ALIASES file {self.path}: {exc.strerror or exc}; "
                "create it, fix its permissions or unset ALIASES"
            ) from exc
        table = parse(text, self.path)
        for warning in table.warnings:
            log.warning(kv(event="aliases-warning", file=self.path, warning=warning))
        self._cached = (stamp, table)
        return table


def _host_names() -> frozenset[str]:
    """Domains that mean "this machine": mail to them is local mail that needs resolving."""
    names = set(LOCALHOST_NAMES)
    host = socket.gethostname().lower().rstrip(".")
    if host:
        names.add(host)
        names.add(host.split(".", 1)[0])
    return frozenset(names)


class Resolver:
    """Turns any recipient into qualified addresses; qualified non-local ones pass unchanged."""

    def __init__(
        self,
        *,
        local_domain: str,
        admin_address: str = "",
        aliases: AliasFile | AliasTable | None = None,
        local_hosts: Iterable[str] | None = None,
    ) -> None:
        if not local_domain or "@" in local_domain:
            raise ConfigError(
                f"LOCAL_DOMAIN={local_domain!r} is not a domain; set e.g. example.com"
            )
        if admin_address and "@" not in admin_address:
            raise ConfigError(
                f"ADMIN_ADDRESS={admin_address!r} has no domain; set a full address like "
                "admin@example.com"
            )
        self.local_domain = local_domain
        self.admin_address = admin_address
        self.aliases = aliases
        hosts = _host_names() if local_hosts is None else frozenset(local_hosts)
        # Our own mail domains are never "this host", even if the hostname says so.
        self.local_hosts = frozenset(h.lower() for h in hosts) - {local_domain.lower()}

    def local_part(self, address: str) -> str | None:
        """The name to resolve, or None when the address is already qualified and remote."""
        local, at, domain = address.rpartition("@")
        if not at:
            return address
        if domain.lower().rstrip(".") in self.local_hosts:
            return local
        return None

    def needs_resolving(self, address: str) -> bool:
        return self.local_part(address) is not None

    def _table(self) -> AliasTable | None:
        if isinstance(self.aliases, AliasFile):
            return self.aliases.table()
        return self.aliases

    def fallback(self, name: str) -> str:
        """Steps 3-4: where a name goes when no alias applies."""
        return self.admin_address or f"{name}@{self.local_domain}"

    def resolve(self, address: str) -> list[str]:
        """Qualified addresses for one recipient, deduplicated; may be empty (``x: /dev/null``)."""
        if self.local_part(address) is None:
            return [address]
        out: dict[str, str] = {}
        self._expand(address, self._table(), (), set(), out)
        return list(out.values())

    def resolve_all(self, addresses: Iterable[str]) -> list[str]:
        """resolve() over a list, deduplicated case-insensitively, first spelling kept."""
        out: dict[str, str] = {}
        for address in addresses:
            for resolved in self.resolve(address):
                out.setdefault(resolved.lower(), resolved)
        return list(out.values())

    def _expand(
        self,
        address: str,
        table: AliasTable | None,
        path: tuple[str, ...],
        done: set[str],
        out: dict[str, str],
    ) -> None:
        if len(out) >= MAX_EXPANSION:
            return
        name = self.local_part(address)
        if name is None:
            out.setdefault(address.lower(), address)
            return
        if name.startswith("\\"):
            fallback = self.fallback(name[1:])
            out.setdefault(fallback.lower(), fallback)
            return
        key = name.lower()
        targets = table.entries.get(key) if table else None
        if targets is None and table and DEFAULT_KEY not in path:
            # A name not in the file goes to default:, but only once per path:
            # "default: nosuchname" must not loop through default: again.
            targets = table.entries.get(DEFAULT_KEY)
            if targets is not None:
                key = DEFAULT_KEY
        if key in path or len(path) >= MAX_DEPTH or targets is None:
            if key in path or len(path) >= MAX_DEPTH:
                log.debug(kv(event="alias-loop", name=name, path=" > ".join(path)))
            fallback = self.fallback(name)
            out.setdefault(fallback.lower(), fallback)
            return
        if key in done:
            return  # already expanded elsewhere in this resolve(): a diamond, not a loop
        done.add(key)
        for target in targets:
            self._expand(target, table, (*path, key), done, out)
