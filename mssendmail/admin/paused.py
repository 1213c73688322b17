"""What the admin commands say about, and do to, the whole-queue pause.

One wording for `list`, `show`, `check` and `test --wait`, so an admin sees
the same reason and the same way out wherever they look; and the one lift
that `resume`, `retry` and `sendmail -q` share.
"""

from __future__ import annotations

from mssendmail.admin.listing import human_delta, human_time, printable
from mssendmail.spool import pause
from mssendmail.spool.layout import Spool

HINT = "fix the cause, then run 'mssendmail-queue resume'"


def describe(found: pause.Pause, now: float) -> str:
    """'until Dec 01 23:10 (in 12m) after: <reason>' with the reason made printable."""
    left = human_delta(found.until - now)
    return f"until {human_time(found.until)} (in {left}) after: {printable(found.reason, 300)}"


def line(spool: Spool, now: float) -> str | None:
    """The one-line warning while delivery is paused, else None."""
    found = pause.active(spool, now)
    if found is None:
        return None
    return f"delivery PAUSED {describe(found, now)}; {HINT}"


def lift(spool: Spool, now: float) -> str | None:
    """Lift the pause and wake the worker; the line saying so, or None if none was in force."""
    found = pause.lift(spool, now)
    if found is None:
        return None
    spool.wake()
    return f"delivery resumed: lifted the pause {describe(found, now)}"
