"""Who may send as whom: ALLOWED_FROM for everyone, ALLOWED_FROM_USERS per user.

Any local user can write any From: header, so the submitter the worker
trusts is the uid pickup read with fstat (the envelope's ``uid`` in queue/,
which no submitter can write). The rules, in order:

* SENDER is always allowed (prepare.SenderPolicy checks it first).
* An address named in ALLOWED_FROM_USERS, itself or by its ``@domain``,
  belongs to the users and ``@groups`` listed for it; an exact address
  entry beats a domain entry. Only they may use it, whatever ALLOWED_FROM
  says: reserving a mailbox is the point of the key.
* Any other address: ALLOWED_FROM, for every local user, as before.
* Root may use every address either key allows: root can edit the config.
* Mail from the service user (mssendmail-smtpd, or the worker's own
  notices) is judged by the envelope's ``smtp_user`` (the SMTP AUTH login,
  with no groups) when there is one, else as the service user by name.
  ``smtp_user`` from any other uid is ignored: a submitter could write it.

A From that is not allowed is rewritten to SENDER, as ALLOWED_FROM does.
User and group names are looked up when a message is prepared, not at start:
an account created after the worker started counts, and a name that is
not (yet) known is no error (`check` warns about it).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from mssendmail.errors import ConfigError

# POSIX portable user names, plus the trailing $ of Samba machine accounts.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\$?")
_SMTP_USER = re.compile(r"[!-~]{1,256}")
EXAMPLE = "ALLOWED_FROM_USERS=alice:alice@example.com,sales@example.com;@ops:@ops.example.com"


@dataclass(frozen=True)
class Grants:
    """Addresses and @domains, lower-cased."""

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    def covers(self, address: str) -> bool:
        return address in self.addresses or address.rpartition("@")[2] in self.domains

    def shown(self) -> list[str]:
        return sorted(self.addresses) + [f"@{d}" for d in sorted(self.domains)]


def parse_grants(key: str, entries: Iterable[str], example: str) -> Grants:
    """Addresses and @domain entries; ConfigError naming the key for anything else."""
    addresses: set[str] = set()
    domains: set[str] = set()
    for entry in entries:
        local, at, domain = entry.strip().lower().rpartition("@")
        # ":" and ";" too: "alice:a@x,bob:b@x" (a missing ";") is not an address "bob:b@x".
        if not at or not domain or any(c in entry.strip() for c in " \t<>;:"):
            raise ConfigError(
                f"{key} entry {entry.strip()!r} is neither an address nor @domain; "
                f"use e.g. {example}"
            )
        if local:
            addresses.add(f"{local}@{domain}")
        else:
            domains.add(domain)
    return Grants(frozenset(addresses), frozenset(domains))


@dataclass(frozen=True)
class Rule:
    """One ALLOWED_FROM_USERS entry: a user name, a uid, or an @group."""

    who: str
    grants: Grants


def parse_users(text: str) -> tuple[Rule, ...]:
    """ALLOWED_FROM_USERS: ``who:address,...`` entries separated by ``;``."""
    rules: dict[str, set[str]] = {}
    for entry in text.split(";"):
        if not entry.strip():
            continue
        who, colon, rest = entry.partition(":")
        who = who.strip()
        name = who[1:] if who.startswith("@") else who
        if not colon or not _NAME.fullmatch(name):
            raise ConfigError(
                f"ALLOWED_FROM_USERS entry {entry.strip()[:60]!r} is not user:address,... "
                f"or @group:address,...; use e.g. {EXAMPLE}"
            )
        addresses = [a for a in rest.split(",") if a.strip()]
        if not addresses:
            raise ConfigError(f"ALLOWED_FROM_USERS entry for {who} lists no address; {EXAMPLE}")
        rules.setdefault(who, set()).update(addresses)
    return tuple(
        Rule(who, parse_grants("ALLOWED_FROM_USERS", sorted(entries), EXAMPLE))
        for who, entries in rules.items()
    )


@dataclass
class Submitter:
    """The trusted identity of a message's submitter, with lazy name and group lookups."""

    uid: int | None
    smtp_user: str | None = None
    service: bool = False

    @property
    def root(self) -> bool:
        return self.uid == 0 and self.smtp_user is None

    @cached_property
    def account(self) -> pwd.struct_passwd | None:
        if self.uid is None or self.smtp_user is not None:
            return None
        try:
            return pwd.getpwuid(self.uid)
        except KeyError:
            return None

    @cached_property
    def groups(self) -> frozenset[str]:
        """The names of the user's groups (primary and supplementary); SMTP users have none."""
        account = self.account
        if account is None:
            return frozenset()
        names = set()
        try:
            gids = os.getgrouplist(account.pw_name, account.pw_gid)
        except OSError:
            gids = [account.pw_gid]
        for gid in gids:
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return frozenset(names)

    def is_(self, who: str) -> bool:
        """Does an ALLOWED_FROM_USERS name (user, uid or @group) mean this submitter?"""
        if self.smtp_user is not None:
            return who == self.smtp_user
        if who.startswith("@"):
            return who[1:] in self.groups
        if self.uid is not None and who == str(self.uid):
            return True
        return self.account is not None and who == self.account.pw_name

    def describe(self) -> str:
        if self.smtp_user is not None:
            return f"SMTP user {self.smtp_user}"
        name = self.account.pw_name if self.account is not None else "?"
        return f"uid {self.uid} ({name})"


def submitter(envelope: Mapping[str, Any], service_uid: int) -> Submitter:
    """Who submitted a queued message, from the fields pickup wrote (never the claims)."""
    uid = envelope.get("uid")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return Submitter(None)
    smtp_user = envelope.get("smtp_user")
    if uid == service_uid and isinstance(smtp_user, str) and _SMTP_USER.fullmatch(smtp_user):
        return Submitter(uid, smtp_user, service=True)
    return Submitter(uid, service=uid == service_uid)


class FromRules:
    """ALLOWED_FROM and ALLOWED_FROM_USERS of one config, parsed once."""

    def __init__(self, everyone: Grants, rules: tuple[Rule, ...] = ()) -> None:
        self.everyone = everyone
        self.rules = rules

    def owners(self, address: str) -> list[str] | None:
        """Who an address is reserved to (exact entries first), or None if nobody's."""
        exact = [r.who for r in self.rules if address in r.grants.addresses]
        if exact:
            return exact
        domain = address.rpartition("@")[2]
        by_domain = [r.who for r in self.rules if domain in r.grants.domains]
        return by_domain or None

    def allows(self, address: str, who: Submitter) -> bool:
        """May this submitter send as this (lower-case, qualified) address?"""
        owners = self.owners(address)
        if owners is None:
            return self.everyone.covers(address)
        return who.root or any(who.is_(name) for name in owners)
