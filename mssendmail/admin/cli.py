"""mssendmail-queue: look at and manage the mssendmail spool.

SYNOPSIS
    mssendmail-queue [--config PATH] COMMAND [ARGS]

    init                          create or repair the spool tree
    list [--state S,..|all] [--json]
    show ID [--body] [--json]     envelope, history, reason, headers
    retry ID..|--all              make deferred mail due now (and lift a pause)
    resume                        lift the delivery pause after fixing its cause
    requeue ID..|--all-dead       dead letters back to the queue, attempts reset
    hold ID.. / release ID..      held mail is never sent and never expires
    delete ID..|--all-dead|--older-than AGE [--state S] [--yes]
    purge-maildrop [--dry-run]    remove directories, FIFOs and the like from maildrop/
    test ADDRESS [--wait] [--timeout SECONDS]
    check                         PASS/WARN/FAIL checklist of the setup
    stats [--json] [--prometheus FILE]

DESCRIPTION
    Works on the spool that submission and the worker use (QUEUE_DIR).
    Commands that move or delete a message take the worker's own flock on
    it first (see admin.py), so they never race with a running worker: a
    message being sent right now is refused with exit 75, try again.
    Listings sort by submission time, fit 80 columns and are colored only
    when stdout is a terminal and NO_COLOR is unset. --json prints one
    object per line with the field names documented in docs/operations.md.

SECURITY
    Reading the spool needs root or membership of group mssendmail; others
    get exit 77. Spool contents are hostile input: control characters are
    replaced before anything reaches the terminal. `check` never prints the
    token or the secret, only the role names in the token.

EXIT STATUS
    0   done
    64  bad command line
    65  the message is not in a state the command applies to
    67  no such message
    69  `test --wait`: the test message was dead-lettered
    75  busy (being sent right now), spool missing, or `test --wait` timed out
    77  permission denied: run as root or a member of group mssendmail
    78  the configuration is unusable, or `check` found a FAIL

FILES
    /etc/mssendmail/.env, QUEUE_DIR (default /var/lib/mssendmail/queue)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate
from typing import Any, TextIO

from mssendmail import __version__, config
from mssendmail.admin import actions as admin
from mssendmail.admin import checks, listing, paused, stats
from mssendmail.argv import Parser
from mssendmail.errors import (
    EX_CANTCREAT,
    EX_NOPERM,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    DataError,
    MssendmailError,
    NoSuchMessage,
    PermissionDenied,
    UsageError,
    exit_code,
    run_main,
)
from mssendmail.spool import meta, record, status
from mssendmail.spool.layout import DEAD, DEFERRED, HOLD, MAILDROP, Spool, init_tree
from mssendmail.submission.addresses import parse_address_list
from mssendmail.submission.writer import Submission, make_envelope

PROG = "mssendmail-queue"
HEADER_LIMIT = 256 * 1024


SEE_ALSO = "See mssendmail-queue(8) for every command, its exit status and examples."
CONFIG_HELP = f"config file (default ${config.ENV_PATH_VAR}, then {config.DEFAULT_PATH})"
STATES_HELP = "comma list of queued, active, deferred, hold, dead, sent, or all"


# Over 40 lines on purpose: one declaration of every command and option, a table
# rather than logic; split up, the command list would be scattered.
def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
    parser = Parser(
        prog=PROG,
        description="Look at and manage the mssendmail spool.",
        epilog=SEE_ALSO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"{CONFIG_HELP}; may also follow COMMAND",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name: str, text: str) -> Parser:
        made: Parser = sub.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=SEE_ALSO,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return made

    command("init", "create or repair the spool tree")
    p = command("list", "one row per message, oldest first")
    p.add_argument(
        "--state",
        default="queued,active,deferred,hold,dead",
        help=f"{STATES_HELP} (default queued,active,deferred,hold,dead)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("show", "everything about one message")
    p.add_argument("id", metavar="ID", help="queue id, as list prints it")
    p.add_argument("--body", action="store_true", help="print the whole message")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = command("retry", "make deferred mail due now")
    p.add_argument("ids", nargs="*", metavar="ID", help="queue ids")
    p.add_argument("--all", action="store_true", help="every deferred message")
    command("resume", "lift the delivery pause after fixing its cause")
    p = command("requeue", "dead letters back into the queue")
    p.add_argument("ids", nargs="*", metavar="ID", help="queue ids of dead letters")
    p.add_argument("--all-dead", action="store_true", help="every dead letter")
    for name, text in (
        ("hold", "hold mail: never sent, never expires"),
        ("release", "unhold: the mail is due now"),
    ):
        p = command(name, text)
        p.add_argument("ids", nargs="+", metavar="ID", help="queue ids")
    p = command("delete", "delete messages for good")
    p.add_argument("ids", nargs="*", metavar="ID", help="queue ids")
    p.add_argument("--all-dead", action="store_true", help="every dead letter")
    p.add_argument(
        "--older-than", metavar="AGE", help="submitted longer ago than AGE (30d, 12h); see --state"
    )
    p.add_argument(
        "--state", default="dead", help=f"with --older-than: {STATES_HELP} (default dead)"
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = command("purge-maildrop", "remove what is no mail from maildrop/")
    p.add_argument("--dry-run", "-n", action="store_true", help="only list the entries")
    p = command("test", "queue a test message")
    p.add_argument("address", metavar="ADDRESS", help="where the test message goes")
    p.add_argument("--wait", action="store_true", help="follow it until it is sent or dead")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long --wait follows it (default 120)",
    )
    command("check", "check the setup: PASS/WARN/FAIL, exit 78 on a FAIL")
    p = command("stats", "counts, ages, last success/failure")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument(
        "--prometheus", metavar="FILE", help="also write node_exporter textfile metrics to FILE"
    )
    return parser


def out(lines: Sequence[str], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    for line in lines:
        stream.write(line + "\n")


# -- commands ---------------------------------------------------------------


def cmd_init(cfg: config.Config, args: argparse.Namespace) -> int:
    try:
        changes = init_tree(cfg.queue_dir)
    except PermissionError:
        raise PermissionDenied(f"cannot create or repair {cfg.queue_dir}: run as root") from None
    out(changes or [f"{cfg.queue_dir}: in order, nothing changed"])
    return 0


def cmd_list(spool: Spool, args: argparse.Namespace) -> int:
    try:
        states = listing.parse_states(args.state)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = listing.collect(spool, states)
    if args.json:
        out(listing.json_lines(rows))
    else:
        warning = paused.line(spool, time.time())
        out(
            ([warning] if warning else [])
            + listing.render(rows, color=listing.use_color(sys.stdout))
        )
    return 0


def _headers(spool: Spool, row: listing.Row) -> tuple[list[tuple[str, str]], str | None]:
    """The message headers and, if the checksum fails, why."""
    path = spool.path(row.area, row.id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return [], exc.strerror
    with os.fdopen(fd, "rb") as fh:
        try:
            _, message_len = record.verify(fh)
        except record.CorruptRecord as exc:
            return [], str(exc)
        fh.seek(0)
        head = fh.read(min(message_len, HEADER_LIMIT))
    end = head.find(b"\n\n")
    end2 = head.find(b"\r\n\r\n")
    cut = min(x for x in (end, end2, len(head)) if x >= 0)
    msg = BytesParser(policy=policy.default).parsebytes(head[:cut] + b"\n\n", headersonly=True)
    headers = []
    for name, value in msg.raw_items():
        try:
            text = str(msg.policy.header_fetch_parse(name, value))
        except Exception:  # a malformed header is shown raw
            text = str(value)
        headers.append((listing.printable(name, 200), listing.printable(" ".join(text.split()))))
    return headers, None


def _body(spool: Spool, row: listing.Row) -> None:
    path = spool.path(row.area, row.id)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        _, message_len = record.verify(fh)
        if sys.stdout.isatty():
            # A terminal gets text without control sequences; a pipe gets the bytes.
            data = record.read_message(fh, message_len).decode("utf-8", "replace")
            clean = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in data)
            sys.stdout.write(clean)
            return
        sys.stdout.flush()
        record.copy_message(fh, message_len, sys.stdout.buffer)
        sys.stdout.buffer.flush()


@dataclass
class Shown:
    """What `show` gathers about one message before any section is rendered."""

    row: listing.Row
    history: list[dict[str, Any]]
    reason: dict[str, Any]
    sent_info: dict[str, Any]
    headers: list[tuple[str, str]]
    damage: str | None
    pause: str | None = None  # why nothing is being sent, while the queue is paused


def cmd_show(spool: Spool, args: argparse.Namespace) -> int:
    row = listing.find(spool, args.id)
    if row is None:
        raise NoSuchMessage(f"no such message: {args.id}")
    if args.body:
        if row.state == listing.SENT_STATE:
            raise NoSuchMessage(f"message {row.id} was sent; its body is no longer kept")
        _body(spool, row)
        return 0
    shown = _gather(spool, row)
    if args.json:
        out([json.dumps(_show_json(shown), sort_keys=True)])
        return 0
    now = time.time()
    lines: list[str] = []
    for section in SHOW_SECTIONS:
        lines.extend(section(shown, now))
    out(lines)
    return 0


def _gather(spool: Spool, row: listing.Row) -> Shown:
    state = meta.read(spool, row.id) if row.state != listing.SENT_STATE else {}
    reason = meta.read_json(spool.reason_path(DEAD, row.id)) if row.state == DEAD else {}
    sent_info = meta.read_json(spool.sent_path(row.id)) if row.state == "sent" else {}
    headers, damage = ([], None) if row.state == "sent" else _headers(spool, row)
    history = [h for h in state.get("history", []) if isinstance(h, dict)]
    pause = paused.line(spool, time.time()) if row.state not in ("sent", DEAD, HOLD) else None
    return Shown(row, history, reason, sent_info, headers, damage, pause)


def _show_json(shown: Shown) -> dict[str, Any]:
    doc: dict[str, Any] = shown.row.as_json()
    doc.update(
        history=shown.history,
        reason=shown.reason or None,
        sent_record=shown.sent_info or None,
        headers=[[n, v] for n, v in shown.headers],
        checksum="ok" if not shown.damage and shown.row.state != "sent" else shown.damage,
    )
    return doc


def _show_state(shown: Shown, now: float) -> list[str]:
    row = shown.row
    status = row.state
    nxt = listing.next_text(row, now)
    if row.state == DEFERRED:
        status += f", next attempt {listing.human_time(row.next_attempt)} ({nxt})"
    lines = [f"id:         {row.id}", f"state:      {status}"]
    if shown.pause:
        lines.extend(listing.wrap("delivery:   ", shown.pause.removeprefix("delivery "), 12))
    lines.append(f"submitted:  {listing.human_time(row.submitted, '?')}")
    return lines


def _show_sent(shown: Shown, now: float) -> list[str]:
    if shown.row.state != "sent":
        return []
    info = shown.sent_info
    lines = [
        f"sent:       {listing.human_time(shown.row.sent)} as "
        f"{listing.printable(info.get('mailbox', '?'), 60)}"
    ]
    for key in ("message_id", "request_id"):
        if info.get(key):
            lines.append(f"{key + ':':<12}{listing.printable(info[key], 66)}")
    return lines


def _show_envelope(shown: Shown, now: float) -> list[str]:
    row, damage = shown.row, shown.damage
    lines = [
        f"size:       {row.size if row.size is not None else '?'} bytes",
        f"from:       {listing.shorten(row.sender or '<>', 68)}",
        "to:         " + listing.recipients_text(row.recipients, 68),
        f"attempts:   {row.attempts}",
    ]
    if row.damaged or damage:
        lines.append(f"DAMAGED:    {listing.shorten(row.damaged or damage or '', 68)}")
    if row.error and not shown.reason:
        lines.extend(listing.wrap("last error: ", f"{row.error_code or '-'}: {row.error}", 12))
    return lines


def _show_dead(shown: Shown, now: float) -> list[str]:
    if not shown.reason:
        return []
    lines = ["dead letter:"]
    for key in ("time", "why", "class", "status", "code", "attempts", "request_id", "message"):
        value = shown.reason.get(key)
        if value is None or value == "":
            continue
        text = listing.human_time(value) if key == "time" and isinstance(value, float) else value
        lines.extend(listing.wrap(f"  {key + ':':<12}", listing.printable(text), 14))
    return lines


def _show_history(shown: Shown, now: float) -> list[str]:
    if not shown.history:
        return []
    lines = ["history:"]
    for item in shown.history:
        when = item.get("time")
        stamp = listing.human_time(when) if isinstance(when, (int, float)) else "?"
        first = f"  {stamp}  {listing.printable(item.get('event', '?'), 12):<9} "
        lines.extend(listing.wrap(first, listing.printable(item.get("detail", "")), 26))
    return lines


def _show_headers(shown: Shown, now: float) -> list[str]:
    if not shown.headers:
        return []
    return ["headers:", *(listing.shorten(f"  {n}: {v}", 80) for n, v in shown.headers)]


# `show`'s text output, one renderer per section, in this order.
SHOW_SECTIONS: tuple[Callable[[Shown, float], list[str]], ...] = (
    _show_state,
    _show_sent,
    _show_envelope,
    _show_dead,
    _show_history,
    _show_headers,
)


def _ids_for(
    spool: Spool, args: argparse.Namespace, flag: str | None, areas: tuple[str, ...]
) -> list[str]:
    ids: list[str] = list(args.ids)
    if flag and getattr(args, flag):
        if ids:
            raise UsageError(f"give ids or --{flag.replace('_', '-')}, not both")
        for area in areas:
            ids.extend(spool.ids(area))
        return sorted(ids)
    if not ids:
        raise UsageError(
            f"give one or more queue ids{' or --' + flag.replace('_', '-') if flag else ''}"
        )
    return ids


def _apply(spool: Spool, action: str, ids: list[str]) -> int:
    """Run an admin action on each id; the first failure's code is the exit status."""
    func = admin.ACTIONS[action]
    status = 0
    done = 0
    for queue_id in ids:
        try:
            result = func(spool, queue_id)
        except MssendmailError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            status = status or exit_code(exc)
            continue
        print(result.text)
        done += 1
    if action in ("retry", "requeue", "release") and done:
        spool.wake()
    if not ids:
        print("nothing to do")
    return status


def cmd_retry(spool: Spool, args: argparse.Namespace) -> int:
    ids = _ids_for(spool, args, "all", (DEFERRED,))
    # Nothing is retried while the queue is paused: asking to retry lifts it.
    lifted = paused.lift(spool, time.time())
    if lifted:
        print(lifted)
        if not ids:
            return 0
    return _apply(spool, "retry", ids)


def cmd_resume(spool: Spool, args: argparse.Namespace) -> int:
    lifted = paused.lift(spool, time.time())
    print(lifted or "delivery is not paused; nothing to do")
    return 0


def cmd_requeue(spool: Spool, args: argparse.Namespace) -> int:
    return _apply(spool, "requeue", _ids_for(spool, args, "all_dead", (DEAD,)))


def cmd_hold(spool: Spool, args: argparse.Namespace) -> int:
    return _apply(spool, "hold", list(args.ids))


def cmd_release(spool: Spool, args: argparse.Namespace) -> int:
    return _apply(spool, "release", list(args.ids))


def parse_age(text: str) -> float:
    try:
        return config.Config({"AGE": text}).seconds("AGE")
    except MssendmailError:
        raise UsageError(f"--older-than {text!r} is not an age like 30d, 12h or 90m") from None


def cmd_delete(spool: Spool, args: argparse.Namespace) -> int:
    if args.older_than:
        if args.ids or args.all_dead:
            raise UsageError("give ids, --all-dead or --older-than, not several")
        try:
            states = listing.parse_states(args.state)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if listing.SENT_STATE in states:
            raise UsageError(
                "sent mail is not in the queue; the worker forgets it after SENT_RETENTION"
            )
        cutoff = time.time() - parse_age(args.older_than)
        rows = listing.collect(spool, states)
        ids = [r.id for r in rows if (r.submitted or 0) < cutoff]
    else:
        ids = _ids_for(spool, args, "all_dead", (DEAD,))
    if not ids:
        print("nothing to delete")
        return 0
    if not args.yes and sys.stdin.isatty():
        sample = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        sys.stdout.write(
            f"delete {len(ids)} message{'s' if len(ids) != 1 else ''} ({sample})? [y/N] "
        )
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("nothing deleted")
            return 0
    return _apply(spool, "delete", ids)


def cmd_purge_maildrop(spool: Spool, args: argparse.Namespace) -> int:
    from mssendmail.admin import maildrop

    entries = maildrop.junk(spool)
    status = 0
    for entry in entries:
        what = f"maildrop/{listing.printable(entry.name)} ({entry.kind}, uid {entry.uid})"
        if args.dry_run:
            print(what)
            continue
        why = maildrop.remove(spool, entry)
        if why is None:
            print(f"removed {what}")
        else:
            print(f"{PROG}: cannot remove {what}: {why}; run as root", file=sys.stderr)
            status = EX_NOPERM
    if not entries:
        print("maildrop/ holds nothing but mail")
    return status


def compose_test(address: str, now: float | None = None) -> bytes:
    """The test message: host name, time and version, so the recipient can tell where from."""
    now = time.time() if now is None else now
    host = socket.getfqdn()
    msg = EmailMessage()
    msg["To"] = address
    msg["Subject"] = f"mssendmail test message from {host}"
    msg["Date"] = formatdate(now, localtime=True)
    msg.set_content(
        f"This is a test message from mssendmail {__version__} on {host},\n"
        f"queued at {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(now))}.\n\n"
        "If you can read this, delivery through Microsoft Graph works.\n"
    )
    return msg.as_bytes()


def cmd_test(cfg: config.Config, spool: Spool, args: argparse.Namespace) -> int:
    address = args.address.strip()
    try:
        found = parse_address_list(address)
    except DataError:
        found = []
    addr = found[0] if len(found) == 1 else ""
    if addr != address or "@" not in addr or not addr.isprintable() or " " in addr:
        raise UsageError(f"{args.address!r} is not an email address like user@example.com")
    with Submission(spool, cfg.max_message_size) as sub:
        sub.write(compose_test(addr))
        queue_id = sub.commit(make_envelope("", [addr], source="mssendmail-queue test"))
    # Flushed: a script or a pipe reads the id while --wait is still following it.
    print(queue_id, flush=True)
    if not args.wait:
        return 0
    return wait_for(spool, queue_id, args.timeout)


def wait_for(spool: Spool, queue_id: str, timeout: float) -> int:
    """Follow a message to sent (0), dead (69) or the timeout (75), reporting deferrals."""
    deadline = time.monotonic() + timeout
    reported = 0
    told_pause = False
    while True:
        area = status.where(spool, queue_id)
        if area == status.SENT_STATE:
            # The record may still be being written: a parked sent/<id> is sent too.
            info = meta.read_json(spool.sent_path(queue_id))
            mailbox = listing.printable(info.get("mailbox", "?"), 80)
            print(f"sent as {mailbox} after {info.get('attempts', '?')} attempt(s)")
            return 0
        if area == DEAD:
            reason = meta.read_json(spool.reason_path(DEAD, queue_id))
            code, message = listing.error_fields(reason)
            print(f"dead: {reason.get('why', '?')}: {message or '?'} ({code or '-'})")
            return EX_UNAVAILABLE
        if area is None:
            print("the message disappeared (deleted?)")
            return EX_UNAVAILABLE
        state = meta.read(spool, queue_id)
        if meta.attempts(state) > reported:
            reported = meta.attempts(state)
            code, message = listing.error_fields(state.get("last_error"))
            out(listing.wrap(f"attempt {reported} failed, will retry: ", f"{message} ({code})", 2))
            sys.stdout.flush()
        warning = paused.line(spool, time.time())
        if warning and not told_pause:
            told_pause = True
            out(listing.wrap("", warning, 2))
            sys.stdout.flush()
        if time.monotonic() >= deadline:
            where = {MAILDROP: "waiting for pickup (is the worker running?)"}.get(area or "", area)
            print(f"still {where} after {int(timeout)}s; see 'mssendmail-queue show {queue_id}'")
            if warning:  # the last line says why: nothing is sent while paused
                out(listing.wrap("not sent because ", warning, 2))
            return EX_TEMPFAIL
        time.sleep(0.2)


def cmd_check(args: argparse.Namespace) -> int:
    results = checks.run(getattr(args, "config", None))
    color = listing.use_color(sys.stdout)
    out([r.line(color) for r in results])
    counts = {
        s: sum(1 for r in results if r.status == s) for s in (checks.PASS, checks.WARN, checks.FAIL)
    }
    print(f"check: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return checks.exit_status(results)


def cmd_stats(spool: Spool, args: argparse.Namespace) -> int:
    snapshot = stats.collect(spool)
    if args.prometheus:
        try:
            stats.write_prometheus(snapshot, args.prometheus)
        except OSError as exc:
            # sysexits EX_CANTCREAT: a missing or unwritable directory, not a bug (70).
            print(
                f"{PROG}: cannot write {args.prometheus}: {exc.strerror}; "
                "check that its directory exists and is writable",
                file=sys.stderr,
            )
            return EX_CANTCREAT
    if args.json:
        out([stats.json_line(snapshot)])
    elif not args.prometheus or sys.stdout.isatty():
        out(stats.render(snapshot))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return cmd_check(args)
    cfg = config.load(getattr(args, "config", None))
    if args.command == "init":
        return cmd_init(cfg, args)
    spool = Spool(cfg.queue_dir)
    listing.require_access(spool)
    if args.command == "test":
        return cmd_test(cfg, spool, args)
    handlers = {
        "list": cmd_list,
        "show": cmd_show,
        "retry": cmd_retry,
        "resume": cmd_resume,
        "requeue": cmd_requeue,
        "hold": cmd_hold,
        "release": cmd_release,
        "delete": cmd_delete,
        "purge-maildrop": cmd_purge_maildrop,
        "stats": cmd_stats,
    }
    return handlers[args.command](spool, args)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # Spool data is any Unicode; an ASCII-only terminal gets '?', not a traceback.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _dispatch_output(args), hint="check QUEUE_DIR and the disk")


def _dispatch_output(args: argparse.Namespace) -> int:
    """dispatch(), with what only a lister meets: a closed pipe and a spool it may not read."""
    try:
        return dispatch(args)
    except MssendmailError:
        raise  # PermissionDenied among them: it says what it is itself
    except PermissionError as exc:
        raise PermissionDenied(listing.NO_ACCESS) from exc
    except BrokenPipeError:
        # `mssendmail-queue list | head`: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
