"""Queue statistics for `mssendmail-queue stats` and for alerting.

Counts messages per state from directory listings alone (no file is
opened for a count), takes the age of the oldest message still waiting for
delivery from its queue id (or, for an id whose time is implausible, as a
hostile name may be, from the file's ctime), the last success from the newest sent/ record
(its mtime is the send time) and the last failure from meta/ and dead/
reason records. ``--prometheus FILE`` writes the node_exporter textfile
format by temp file + fsync + rename, so the collector never reads half a
file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mssendmail.admin.listing import id_time, printable, require_access, sent_ids
from mssendmail.spool import meta, pause
from mssendmail.spool.layout import (
    ACTIVE,
    CORRUPT,
    DEAD,
    DEFERRED,
    HEARTBEAT_FILE,
    HOLD,
    MAILDROP,
    META,
    QUEUE,
    REASON_SUFFIX,
    Spool,
    entry_id,
    is_id,
    write_atomic,
)

WAITING = (MAILDROP, QUEUE, ACTIVE, DEFERRED)


@dataclass
class Stats:
    """A snapshot; times are Unix seconds, None when there is nothing to tell."""

    counts: dict[str, int] = field(default_factory=dict)
    oldest_queued_age: float | None = None
    last_success: float | None = None
    last_success_id: str | None = None
    last_failure: float | None = None
    last_failure_id: str | None = None
    last_failure_reason: str | None = None
    paused_until: float | None = None
    pause_reason: str | None = None
    heartbeat: float | None = None
    # mailbox -> [recipients in the last 24 h, DAILY_RECIPIENT_LIMIT]
    budgets: dict[str, list[int]] = field(default_factory=dict)
    # why deferred mail waits without a failure: DailyRecipientLimit, MailboxRate
    waiting: dict[str, int] = field(default_factory=dict)
    # MIME repairs (delivery/mime.py) of sent messages since the worker started.
    mime_fixed: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _listdir(spool: Spool, area: str) -> list[str]:
    try:
        return os.listdir(spool.dir(area))
    except (FileNotFoundError, PermissionError):
        return []


def _oldest(spool: Spool, area: str, ids: list[str], now: float) -> float | None:
    """The earliest submission time among ids.

    A hostile name (000000000000000000) claims any time it likes: for an id
    whose time is implausible the file's ctime stands in, which the kernel
    sets and which is never before the file arrived.
    """
    times = []
    for queue_id in ids:
        when = id_time(queue_id, now)
        if when is None:
            try:
                when = min(os.lstat(spool.path(area, queue_id)).st_ctime, now)
            except OSError:
                continue  # moved on while we looked
        times.append(when)
    return min(times, default=None)


def collect(spool: Spool, now: float | None = None) -> Stats:
    require_access(spool)
    now = time.time() if now is None else now
    stats = Stats()
    sent = _count_areas(spool, stats, now)
    _last_success(spool, sent, stats)
    _last_failure(spool, stats)
    _limits(spool, stats, now)
    until = pause.queue_paused_until(spool)
    if until > now:
        stats.paused_until = until
        reason = pause.current(spool).get("reason")
        stats.pause_reason = printable(reason, 300) if isinstance(reason, str) else None
    _heartbeat(spool, stats)
    return stats


def _count_areas(spool: Spool, stats: Stats, now: float) -> list[str]:
    """Messages per state, corrupt/ and sent/ entries, and the oldest waiting message's age.

    Returns the sent ids it counted.
    """
    oldest: float | None = None
    for name, areas in (
        ("queued", (MAILDROP, QUEUE)),
        ("active", (ACTIVE,)),
        ("deferred", (DEFERRED,)),
        ("hold", (HOLD,)),
        ("dead", (DEAD,)),
    ):
        count = 0
        for area in areas:
            ids = [n for n in _listdir(spool, area) if is_id(n)]
            count += len(ids)
            if area in WAITING:
                first = _oldest(spool, area, ids, now)
                if first is not None:
                    oldest = first if oldest is None else min(oldest, first)
        stats.counts[name] = count
    stats.counts["corrupt"] = sum(1 for n in _listdir(spool, CORRUPT) if is_id(n))
    sent = sent_ids(spool)
    stats.counts["sent"] = len(sent)
    if oldest is not None:
        stats.oldest_queued_age = max(0.0, now - oldest)
    return sent


def _heartbeat(spool: Spool, stats: Stats) -> None:
    """The worker's last heartbeat and the MIME repairs it reported."""
    heartbeat = meta.read_json(spool.state_path(HEARTBEAT_FILE))
    beat = heartbeat.get("time")
    if isinstance(beat, (int, float)) and not isinstance(beat, bool):
        stats.heartbeat = float(beat)
    fixes = heartbeat.get("mime_fixed")
    if isinstance(fixes, dict):
        stats.mime_fixed = {
            k: v
            for k, v in fixes.items()
            if k.isascii() and k.isalnum() and type(v) is int and v >= 0
        }


def _last_success(spool: Spool, sent: list[str], stats: Stats) -> None:
    best: tuple[float, str] | None = None
    for queue_id in sent:
        try:
            mtime = os.stat(spool.sent_path(queue_id)).st_mtime
        except FileNotFoundError:
            continue
        if best is None or mtime > best[0]:
            best = (mtime, queue_id)
    if best is None:
        return
    info = meta.read_json(spool.sent_path(best[1]))
    when = info.get("sent")
    stats.last_success = float(when) if isinstance(when, (int, float)) else best[0]
    stats.last_success_id = best[1]


def _last_failure(spool: Spool, stats: Stats) -> None:
    """The newest last_error in meta/ or reason in dead/."""
    candidates: list[tuple[str, str]] = [
        (queue_id, spool.meta_path(queue_id))
        for queue_id in map(entry_id, _listdir(spool, META))
        if queue_id is not None
    ]
    candidates += [
        (queue_id, spool.reason_path(DEAD, queue_id))
        for queue_id in (entry_id(name, REASON_SUFFIX) for name in _listdir(spool, DEAD))
        if queue_id is not None
    ]
    for queue_id, path in candidates:
        data = meta.read_json(path)
        err = data.get("last_error") if path.startswith(spool.dir(META)) else data
        if not isinstance(err, dict):
            continue
        when = err.get("time")
        if not isinstance(when, (int, float)) or isinstance(when, bool):
            continue
        if stats.last_failure is None or when > stats.last_failure:
            stats.last_failure = float(when)
            stats.last_failure_id = queue_id
            bits = [str(err[k]) for k in ("code", "status") if err.get(k)]
            message = err.get("message")
            text = f"{message} ({', '.join(bits)})" if bits else str(message)
            stats.last_failure_reason = printable(text, 300)


def _limits(spool: Spool, stats: Stats, now: float) -> None:
    """Budget use per mailbox (state/budget-*.json) and why deferred mail waits."""
    from mssendmail.spool import budget

    stats.budgets = {mb: [used, limit] for mb, (used, limit) in budget.usage(spool, now).items()}
    for name in _listdir(spool, META):
        queue_id = entry_id(name)
        if queue_id is None:
            continue
        wait = meta.read_json(spool.meta_path(queue_id)).get("wait")
        if isinstance(wait, dict) and os.path.exists(spool.path(DEFERRED, queue_id)):
            code = printable(wait.get("code", "?"), 40)
            stats.waiting[code] = stats.waiting.get(code, 0) + 1


def render(stats: Stats, now: float | None = None) -> list[str]:
    """The human view, within 80 columns."""
    now = time.time() if now is None else now
    return [*_render_counts(stats), *_render_times(stats, now), *_render_state(stats, now)]


def _render_counts(stats: Stats) -> list[str]:
    counts = stats.counts
    lines = [
        "  ".join(f"{name} {counts.get(name, 0)}" for name in ("queued", "active", "deferred"))
        + "  "
        + "  ".join(f"{name} {counts.get(name, 0)}" for name in ("hold", "dead", "sent"))
    ]
    if counts.get("corrupt"):
        lines.append(f"corrupt {counts['corrupt']} (quarantined submissions in corrupt/)")
    return lines


def _render_times(stats: Stats, now: float) -> list[str]:
    """The oldest queued message, the last success and the last failure."""
    from mssendmail.admin.listing import human_delta, human_time, wrap

    lines = []
    if stats.oldest_queued_age is None:
        lines.append("oldest queued: none, queue is empty")
    else:
        lines.append(f"oldest queued: {human_delta(stats.oldest_queued_age)} old")
    if stats.last_success is None:
        lines.append("last success:  none recorded")
    else:
        ago = human_delta(now - stats.last_success)
        lines.append(
            f"last success:  {human_time(stats.last_success)} ({ago} ago) {stats.last_success_id}"
        )
    if stats.last_failure is None:
        lines.append("last failure:  none recorded")
    else:
        ago = human_delta(now - stats.last_failure)
        lines.append(
            f"last failure:  {human_time(stats.last_failure)} ({ago} ago) {stats.last_failure_id}"
        )
        lines.extend(wrap("  ", stats.last_failure_reason or "?", 2))
    return lines


def _render_state(stats: Stats, now: float) -> list[str]:
    """Pause, budgets, waiting mail, the worker's heartbeat and MIME repairs."""
    from mssendmail.admin.listing import human_delta, human_time, shorten, wrap

    lines = []
    if stats.paused_until is not None:
        lines.extend(
            wrap(f"PAUSED until {human_time(stats.paused_until)}: ", stats.pause_reason or "?", 2)
        )
    for mailbox, (used, limit) in sorted(stats.budgets.items()):
        share = f" ({100 * used // limit}%)" if limit > 0 else ""
        lines.append(
            shorten(f"budget:        {used}/{limit} recipients in 24 h{share} {mailbox}", 80)
        )
    for code, count in sorted(stats.waiting.items()):
        lines.append(f"waiting:       {count} deferred by {code} (not failures)")
    if stats.heartbeat is None:
        lines.append("worker:        no heartbeat seen")
    else:
        lines.append(f"worker:        last heartbeat {human_delta(now - stats.heartbeat)} ago")
    if stats.mime_fixed:
        fixes = ", ".join(f"{k} {v}" for k, v in sorted(stats.mime_fixed.items()))
        lines.append(f"MIME repaired: {fixes} (since the worker started)")
    return lines


def prometheus(stats: Stats) -> str:
    """The node_exporter textfile format."""
    out = [
        "# HELP mssendmail_messages Messages in the mssendmail spool by state.",
        "# TYPE mssendmail_messages gauge",
    ]
    for state, count in stats.counts.items():
        out.append(f'mssendmail_messages{{state="{state}"}} {count}')
    for name, help_text, value in _gauges(stats):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:.3f}"]
    out += _limit_metrics(stats)
    if stats.mime_fixed:
        name = "mssendmail_mime_fixed_total"
        out += [
            f"# HELP {name} Sent messages whose MIME was repaired, by repair, since the worker "
            "started.",
            f"# TYPE {name} counter",
        ]
        out += [f'{name}{{fix="{k}"}} {v}' for k, v in sorted(stats.mime_fixed.items())]
    return "\n".join(out) + "\n"


def _gauges(stats: Stats) -> list[tuple[str, str, float]]:
    """(name, help, value) of each single-value gauge."""
    return [
        (
            "mssendmail_oldest_queued_age_seconds",
            "Age of the oldest message waiting for delivery (0 when none).",
            stats.oldest_queued_age or 0.0,
        ),
        (
            "mssendmail_last_success_timestamp_seconds",
            "Unix time of the last delivered message (0 when none).",
            stats.last_success or 0.0,
        ),
        (
            "mssendmail_last_failure_timestamp_seconds",
            "Unix time of the last failed delivery attempt (0 when none).",
            stats.last_failure or 0.0,
        ),
        (
            "mssendmail_queue_paused",
            "1 while delivery is paused by a credential or tenant problem.",
            1.0 if stats.paused_until is not None else 0.0,
        ),
        (
            "mssendmail_worker_heartbeat_timestamp_seconds",
            "Unix time of the worker's last heartbeat (0 when none).",
            stats.heartbeat or 0.0,
        ),
    ]


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _limit_metrics(stats: Stats) -> list[str]:
    out = [
        "# HELP mssendmail_recipients_24h Recipients handed to Graph per mailbox, rolling 24 h.",
        "# TYPE mssendmail_recipients_24h gauge",
    ]
    out += [
        f'mssendmail_recipients_24h{{mailbox="{_label(m)}"}} {u}'
        for m, (u, _) in sorted(stats.budgets.items())
    ]
    out += [
        "# HELP mssendmail_recipient_limit DAILY_RECIPIENT_LIMIT last applied per mailbox.",
        "# TYPE mssendmail_recipient_limit gauge",
    ]
    out += [
        f'mssendmail_recipient_limit{{mailbox="{_label(m)}"}} {lim}'
        for m, (_, lim) in sorted(stats.budgets.items())
    ]
    out += [
        "# HELP mssendmail_waiting Deferred messages waiting for a limit, not a failure.",
        "# TYPE mssendmail_waiting gauge",
    ]
    out += [
        f'mssendmail_waiting{{reason="{_label(c)}"}} {n}' for c, n in sorted(stats.waiting.items())
    ]
    return out


def write_prometheus(stats: Stats, path: str) -> None:
    """Atomically replace path (temp name without .prom, so the collector skips it)."""
    write_atomic(os.path.abspath(path), prometheus(stats).encode(), 0o644)


def json_line(stats: Stats) -> str:
    return json.dumps(stats.as_json(), sort_keys=True)
