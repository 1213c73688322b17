"""`check` lines for exactly-once delivery and mailbox protection.

What `mssendmail-queue check` says about the permissions behind idempotent
retries (Mail.ReadBasic.All) and Sent Items clean-up (Mail.ReadWrite), read
from the token's roles and from what the worker last met (a 403 it
recorded in state/sentitems-lookup.json).
"""

from __future__ import annotations

from mssendmail.admin.checks import FAIL, PASS, WARN, Result
from mssendmail.admin.listing import human_time, printable
from mssendmail.config import Config
from mssendmail.spool import statefiles
from mssendmail.spool.layout import Spool

READ_ROLES = ("Mail.ReadBasic.All", "Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite")
LOOKUP = "Mail.ReadBasic.All"
NO_LOOKUP = (
    "after a timeout, a 5xx or a crash the worker cannot tell whether Graph sent the "
    "message, and sends it again (a possible duplicate); grant Mail.ReadBasic.All "
    "(Application), scoped to the sending mailboxes with RBAC for Applications "
    "(docs/permissions.md)"
)


def check_lookup(spool: Spool, roles: list[str] | None) -> Result:
    """PASS/WARN for the Sent Items lookup; roles None = the token showed none."""
    denied = statefiles.read_denied(spool)
    if denied:
        when = denied.get("time")
        at = human_time(float(when)) if isinstance(when, (int, float)) else "?"
        mailbox = printable(denied.get("mailbox", "?"), 120)
        return Result(WARN, LOOKUP, f"Graph refused the lookup for {mailbox} at {at}; {NO_LOOKUP}")
    if roles is None:
        return Result(PASS, LOOKUP, "no refusal seen by the worker (the token names no roles)")
    if any(role in roles for role in READ_ROLES):
        return Result(PASS, LOOKUP, "granted: a retry after an unknown outcome looks first")
    return Result(WARN, LOOKUP, f"not granted; {NO_LOOKUP}")


def check_cleanup(cfg: Config, roles: list[str] | None) -> Result | None:
    """SENT_ITEMS=delete needs Mail.ReadWrite."""
    if cfg.get("SENT_ITEMS").lower() != "delete":
        return None
    if roles is None or "Mail.ReadWrite" in roles:
        return Result(PASS, "SENT_ITEMS", "delete: copies in Sent Items are removed after sending")
    return Result(
        FAIL,
        "SENT_ITEMS",
        "SENT_ITEMS=delete needs Mail.ReadWrite (Application); grant it or set SENT_ITEMS=keep",
    )


def token_roles(token: str) -> list[str] | None:
    from mssendmail.graph.credentials import token_claims

    raw = token_claims(token).get("roles")
    roles = [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
    return roles or None


def checks(cfg: Config, spool: Spool, token: str | None) -> list[Result]:
    """The lines check adds after the roles (token None: it could not get one)."""
    roles = token_roles(token) if token is not None else None
    results = [check_lookup(spool, roles)]
    cleanup = check_cleanup(cfg, roles)
    if cleanup is not None:
        results.append(cleanup)
    return results


def check_budget(spool: Spool, now: float | None = None) -> list[Result]:
    """One line per mailbox that sent in the last 24 h: its share of the daily limit."""
    import time

    from mssendmail.spool import budget

    now = time.time() if now is None else now
    results = []
    for mailbox, (used, limit) in sorted(budget.usage(spool, now).items()):
        text = f"{printable(mailbox, 120)}: {used} of {limit} recipients in the last 24 h"
        if limit > 0 and used >= limit:
            results.append(Result(WARN, "budget", text + "; mail for it waits for the window"))
        elif limit > 0 and used >= budget.WARN_AT * limit:
            results.append(Result(WARN, "budget", text + "; over 80%, mail past it will wait"))
        else:
            results.append(Result(PASS, "budget", text))
    return results
