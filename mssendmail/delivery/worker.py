"""mssendmail-worker: deliver the spool to Microsoft Graph.

SYNOPSIS
    mssendmail-worker [--once] [--config PATH] [-v]

DESCRIPTION
    Moves submissions from maildrop/ into the private queue (pickup), then
    sends every due message through the configured transport with up to
    CONCURRENCY requests in flight (never more than 4 per mailbox). Failed
    messages are deferred with exponential backoff and jitter, or Retry-After
    when longer; permanent failures and messages past MAX_AGE/MAX_ATTEMPTS
    go to dead/ with a reason. A configuration failure (bad secret, missing
    consent) pauses the whole queue instead of dead-lettering it.

    Without --once it runs as a service: it wakes on the trigger FIFO, rescans
    every second, and on SIGTERM stops taking new work, lets in-flight sends
    finish, and exits 0. Messages it could not finish stay queued. SIGHUP
    re-reads the config (reload.py): sends in flight finish with the old
    one; a config that does not load keeps the old one and logs one line.

SECURITY
    Runs as the mssendmail user. Reads the secrets in the config; writes
    tokens only to state/ (mode 0600). Every maildrop/ entry is treated as
    hostile (see pickup.py).

EXIT STATUS
    0   every due message was handled (sent, deferred or dead-lettered)
    75  delivery is paused by a credential or network problem (--once)
    78  the configuration is unusable, or QUEUE_DIR or LOG_DIR is (see
        startup.py: the same checks as `mssendmail-queue check`)

FILES
    /etc/mssendmail/.env, QUEUE_DIR (default /var/lib/mssendmail/queue),
    LOG_DIR/mssendmail.log
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import select
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mssendmail import __version__, config, logs
from mssendmail.argv import Parser
from mssendmail.delivery import affinity, cleanup, idempotency, outcome, startup
from mssendmail.delivery.attempt import Context, MailboxGate, Outcome, Policy, deliver
from mssendmail.delivery.pickup import listing, pickup
from mssendmail.errors import EX_TEMPFAIL, MssendmailError, exit_code, run_main
from mssendmail.spool import pause
from mssendmail.spool.layout import DEFERRED, QUEUE, STATE, Spool, sweep_temps, unlink_quiet
from mssendmail.transport import from_config

log = logging.getLogger("mssendmail.delivery.worker")

PROG = "mssendmail-worker"
RESCAN_SECONDS = 1.0
PREPARE_AHEAD = 2  # threads beyond CONCURRENCY that prepare while others wait on Graph
PICKUP_BATCH = 64  # small rounds keep dispatch going while a big maildrop/ drains
HEARTBEAT_FILE = "heartbeat.json"
FLUSH_MIN_INTERVAL = 60.0
SWEEP_INTERVAL = 600.0
RECOVER_SECONDS = 60.0
TIDY_SECONDS = 5.0  # how often due SENT_ITEMS=delete jobs are looked at
ERROR_PAUSE = 10.0  # after an unexpected error (disk full, a bug): stop dispatching this long


class Worker:
    """The scheduling loop; delivery itself is deliver.deliver() in pool threads."""

    def __init__(self, ctx: Context, concurrency: int, once: bool) -> None:
        self.ctx = ctx
        self.spool = ctx.spool
        self.once = once
        # More threads than requests in flight: while CONCURRENCY requests wait
        # on Graph, the others claim, verify and prepare the next messages.
        self.threads = concurrency + PREPARE_AHEAD
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="send")
        self.inflight: dict[str, Future[Outcome]] = {}
        self.pending: collections.deque[tuple[str, str]] = collections.deque()
        self.last_scan = 0.0
        self.stopping = threading.Event()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.fifo_fd = -1
        self.fifo_keep = -1
        self.last_flush = 0.0
        self.last_sweep = 0.0
        self.last_recover = 0.0
        self.stall_until = 0.0
        self.triggered = True
        self.last_listing = 0.0
        self.backlog: collections.deque[str] = collections.deque()
        # Pickup fsyncs every copy (~1.3 ms a message here): in its own thread
        # it no longer holds up dispatch in this one.
        self.pickup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pickup")
        self.picking: Future[list[str]] | None = None
        self.pending_ids: set[str] = set()
        self.outcomes: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.network_failures = 0
        self.reload_asked = threading.Event()  # SIGHUP
        self.config_path: str | None = None
        self.verbose = False
        self.retired: list[Context] = []  # replaced by a reload; closed at exit
        self.last_tidy = 0.0
        self.tidying: Future[int] | None = None

    # -- wake-ups -------------------------------------------------------
    def open_trigger(self) -> None:
        path = self.spool.trigger_path
        try:
            self.fifo_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            # Holding a writer open ourselves keeps select() from spinning on EOF.
            self.fifo_keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.warning(logs.kv(event="no-trigger", path=path, error=exc.strerror))

    def poke(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass  # pipe full: already poked

    def wait(self, timeout: float) -> bool:
        """Sleep until a trigger, a finished send or timeout; True if a flush was asked."""
        fds = [self.wake_r] + ([self.fifo_fd] if self.fifo_fd >= 0 else [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            return False
        flush = False
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if fd == self.fifo_fd:
                self.triggered = True
            flush = flush or b"F" in data
        return flush

    # -- scheduling -----------------------------------------------------
    def due(self, now: float) -> list[tuple[str, str]]:
        """(id, area) of every message that may be tried now, oldest first."""
        items = [(qid, QUEUE) for qid in self.spool.ids(QUEUE)] + self.due_deferred(now)
        items.sort()
        return [item for item in items if item[0] not in self.inflight]

    def due_deferred(self, now: float) -> list[tuple[str, str]]:
        items = []
        for qid in self.spool.ids(DEFERRED):
            try:
                if os.stat(self.spool.path(DEFERRED, qid)).st_mtime <= now:
                    items.append((qid, DEFERRED))
            except FileNotFoundError:
                continue
        return items

    def flush_deferred(self, now: float) -> None:
        """sendmail -q: make deferred mail due now and lift a pause, at most once a minute."""
        if now - self.last_flush < FLUSH_MIN_INTERVAL:
            return
        self.last_flush = now
        lifted = pause.lift(self.spool, now)
        if lifted is not None:
            log.info(logs.kv(event="pause-lifted", why="sendmail -q", reason=lifted.reason))
        for qid in self.spool.ids(DEFERRED):
            try:
                os.utime(self.spool.path(DEFERRED, qid), (now, now))
            except FileNotFoundError:
                continue
        log.info(logs.kv(event="flush"))

    def refill(self, now: float) -> None:
        """Fill the send list: a full scan when it ran dry, else due deferred mail.

        queue/ is listed only when the list is empty; a big backlog would
        otherwise cost a listing of every queued file each second.
        """
        if not self.pending:
            self.pending = collections.deque(self.due(now))
            self.pending_ids = {qid for qid, _ in self.pending}
            self.last_scan = now
        elif now - self.last_scan >= RESCAN_SECONDS:
            self.last_scan = now
            self.add_pending(self.due_deferred(now))

    def add_pending(self, items: list[tuple[str, str]]) -> None:
        for item in items:
            if item[0] not in self.pending_ids and item[0] not in self.inflight:
                self.pending.append(item)
                self.pending_ids.add(item[0])

    def dispatch(self) -> None:
        while self.pending and len(self.inflight) < self.threads:
            if self.stopping.is_set():
                return
            qid, area = self.pending.popleft()
            self.pending_ids.discard(qid)
            if qid not in self.inflight:
                self.inflight[qid] = self.pool.submit(self._run_one, qid, area)

    def _run_one(self, qid: str, area: str) -> Outcome:
        try:
            return deliver(self.ctx, qid, area)
        except Exception as exc:  # a bug or the disk: keep the worker alive, the claim is released
            log.error(logs.kv(event="attempt-error", id=qid, error=f"{type(exc).__name__}: {exc}"))
            # The message went back to queue/; without a pause it would be
            # retried at once, in a loop, against Graph.
            self.stall_until = self.ctx.now() + ERROR_PAUSE
            return Outcome.SKIPPED
        finally:
            self.poke()

    def reap(self) -> None:
        for qid, future in list(self.inflight.items()):
            if future.done():
                del self.inflight[qid]
                self.outcomes[future.result()] += 1

    def heartbeat(self, now: float) -> None:
        data = {
            "pid": os.getpid(),
            "time": now,
            "mode": "once" if self.once else "service",
            "version": __version__,
            "inflight": len(self.inflight),
            "mime_fixed": self.ctx.mime_fixes.snapshot(),  # since this worker started
        }
        path = self.spool.path(STATE, HEARTBEAT_FILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)  # not fsynced: a lost heartbeat is harmless
        except OSError:
            unlink_quiet(tmp)

    def sweep(self, now: float) -> None:
        """Forget sent-mail records older than SENT_RETENTION."""
        if now - self.last_sweep < SWEEP_INTERVAL:
            return
        self.last_sweep = now
        keep = self.ctx.cfg.seconds("SENT_RETENTION")
        directory = self.spool.dir("sent")
        try:
            names = os.listdir(directory)
        except OSError as exc:  # the spool went away under us: say so, keep running
            log.error(logs.kv(event="sweep-error", dir=directory, error=exc.strerror))
            return
        for name in names:
            path = os.path.join(directory, name)
            try:
                if now - os.stat(path).st_mtime > keep:
                    os.unlink(path)
            except FileNotFoundError:
                continue

    # -- main loops -----------------------------------------------------
    def step(self) -> bool:
        """One round of pickup and dispatch; True if anything is (still) to do."""
        now = self.ctx.now()
        self.reap()
        picking = self.pickup_round(now)
        if pause.queue_paused_until(self.spool) > now or self.stall_until > now:
            return bool(self.inflight) or picking or (not self.once and self.stall_until > now)
        self.refill(now)
        self.dispatch()
        return bool(self.pending or self.inflight or picking or self.backlog)

    def pickup_round(self, now: float) -> bool:
        """Collect the last pickup batch and start the next; True while one runs.

        Listing maildrop/ costs O(its size), so it is listed once into a
        backlog that is handed out a batch at a time whenever the send list
        runs low; it is listed again only when the backlog is used up and a
        trigger arrived, a second passed, or the worker is idle.
        """
        if self.picking is not None:
            if not self.picking.done():
                return True
            done, self.picking = self.picking, None
            try:
                picked = done.result()
            except OSError as exc:  # the disk, most likely: the originals stay in maildrop/
                log.error(logs.kv(event="pickup-error", error=exc.strerror or str(exc)))
                self.stall_until = now + ERROR_PAUSE
                picked = []
            self.add_pending([(qid, QUEUE) for qid in picked])
        if self.stopping.is_set():
            return False
        if not self.backlog:
            idle = not self.pending and not self.inflight
            if not (idle or self.triggered or now - self.last_listing >= RESCAN_SECONDS):
                return False
            self.triggered = False
            self.last_listing = now
            self.backlog = collections.deque(listing(self.spool))
        elif len(self.pending) >= PICKUP_BATCH:
            return False
        batch = [self.backlog.popleft() for _ in range(min(PICKUP_BATCH, len(self.backlog)))]
        if not batch:
            return False
        self.picking = self.pickup_pool.submit(self._pickup, batch)
        return True

    def _pickup(self, batch: list[str]) -> list[str]:
        try:
            return pickup(self.spool, self.ctx.cfg.max_message_size, names=batch)
        finally:
            self.poke()

    def run_service(self) -> int:
        self.open_trigger()
        while not self.stopping.is_set():
            if self.reload_asked.is_set():
                self.reload_asked.clear()
                self.reload()
            now = self.ctx.now()
            self.heartbeat(now)
            self.sweep(now)
            if now - self.last_recover >= RECOVER_SECONDS:
                self.last_recover = now
                self.housekeeping(now)
            self.step()
            self.tidy_sent_items(now)
            # step() dispatched all it may; finished sends and pickups poke us.
            if self.wait(RESCAN_SECONDS):
                self.flush_deferred(self.ctx.now())
        self.drain_inflight()
        return 0

    def reload(self) -> None:
        """SIGHUP: a new context for new attempts; sends in flight keep the old one."""
        from mssendmail.delivery.reload import reload

        fresh = reload(self.ctx, self.config_path, self.verbose)
        if fresh is not None:
            self.retired.append(self.ctx)
            self.ctx = fresh

    def close(self) -> None:
        for ctx in [*self.retired, self.ctx]:
            ctx.transport.close()

    def housekeeping(self, now: float) -> None:
        """What killed processes leave behind: claims, temp files, parked sent mail."""
        idempotency.recover(self.spool, now)  # marks each one's outcome unknown
        for name in sweep_temps(self.spool, now):
            log.info(logs.kv(event="removed-temp", file=name))
        outcome.sweep_sent(self.spool, now)

    def tidy_sent_items(self, now: float) -> None:
        """SENT_ITEMS=delete: one clean-up round at a time, in a pool thread."""
        if now - self.last_tidy < TIDY_SECONDS or not (self.tidying is None or self.tidying.done()):
            return
        self.last_tidy = now
        self.tidying = self.pool.submit(cleanup.run_due, self.ctx)

    def run_once(self) -> int:
        self.housekeeping(self.ctx.now())
        self.heartbeat(self.ctx.now())
        while not self.stopping.is_set():
            if not self.step():
                break
            self.wait(0.05)  # finished sends and pickups poke us
        self.drain_inflight()
        while cleanup.run_due(self.ctx) >= cleanup.BATCH:  # SENT_ITEMS=delete jobs now due
            pass
        self.sweep(self.ctx.now())
        now = self.ctx.now()
        if pause.queue_paused_until(self.spool) > now or self.stall_until > now:
            return EX_TEMPFAIL
        return 0

    def drain_inflight(self) -> None:
        self.pickup_pool.shutdown(wait=True)  # its copies are queued, or their originals stay
        self.pool.shutdown(wait=True)
        self.reap()


def lift_stale_pause(ctx: Context) -> None:
    """A pause that other credential settings caused ends now: the admin fixed them."""
    from mssendmail.graph import fingerprint

    lifted = pause.lift_if_changed(ctx.spool, ctx.now(), fingerprint.of(ctx.cfg))
    if lifted is not None:
        log.info(
            logs.kv(event="pause-lifted", why="credential settings changed", reason=lifted.reason)
        )


def build_context(cfg: config.Config, gate: MailboxGate | None = None) -> Context:
    from mssendmail.delivery.notice_hook import notifier

    spool = Spool(cfg.queue_dir)
    transport = from_config(cfg)
    return Context(
        gate=gate or MailboxGate(spool.dir(STATE), in_flight=cfg.integer("CONCURRENCY")),
        spool=spool,
        cfg=cfg,
        transport=transport,
        policy=Policy.from_config(cfg),
        notify=notifier(cfg, spool),
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="mssendmail-worker",
        description=__doc__.split("\n")[0],
        epilog="exit status: 0 done, 75 delivery paused (--once), 78 unusable config\n"
        "See mssendmail-worker(8).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--once", action="store_true", help="deliver what is due, then exit (for timers)"
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default ${config.ENV_PATH_VAR}, then {config.DEFAULT_PATH})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG lines too")
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


START_HINT = "check QUEUE_DIR and run 'mssendmail-queue init'"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(PROG, lambda: serve(args), hint=START_HINT)


def serve(args: argparse.Namespace) -> int:
    """Start up (errors end here, through run_main), then run until done or stopped."""
    cfg = config.load(args.config)
    # The same steps as `mssendmail-queue check`: one line and 78, not a traceback.
    startup.validate(cfg)
    logs.setup(cfg.log_dir, args.verbose)
    concurrency = startup.concurrency(cfg)
    cpu = affinity.apply(cfg.get("WORKER_CPU"))  # before any thread starts
    ctx = build_context(cfg)
    cleanup.enabled(ctx)  # SENT_ITEMS must be keep or delete: exit 78 now
    worker = Worker(ctx, concurrency, args.once)
    worker.config_path, worker.verbose = args.config, args.verbose
    lift_stale_pause(ctx)

    def stop(signum: int, frame: Any) -> None:
        worker.stopping.set()
        worker.poke()

    def reload(signum: int, frame: Any) -> None:
        worker.reload_asked.set()
        worker.poke()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)  # --once ignores it: it reads the config anyway
    log.info(
        logs.kv(
            event="start",
            version=__version__,
            mode="once" if args.once else "service",
            concurrency=concurrency,
            cpu="all" if cpu is None else cpu,
            transport=cfg.get("TRANSPORT"),
        )
    )
    try:
        code = worker.run_once() if args.once else worker.run_service()
    except MssendmailError as exc:
        log.error(logs.kv(event="stopped", error=str(exc)))
        code = exit_code(exc)
    finally:
        worker.close()
    log.info(logs.kv(event="stop", **{o.value: n for o, n in worker.outcomes.items()}))
    return code


if __name__ == "__main__":
    sys.exit(main())
