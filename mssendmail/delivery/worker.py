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
    every second, and on SIGTERM stops taking new work, gives in-flight sends
    STOP_GRACE (5 s) to finish, and exits 0. Messages it could not finish stay
    queued (or claimed in active/, recovered at the next start).
    SIGHUP re-reads the config (reload.py): sends in flight finish with the old
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
import logging
import os
import select
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

from mssendmail import __version__, config, logs
from mssendmail.argv import Parser
from mssendmail.delivery import affinity, cleanup, fairness, heartbeat, protection, startup
from mssendmail.delivery.attempt import Context, Outcome, RetryPolicy, deliver
from mssendmail.delivery.gate import MailboxGate
from mssendmail.delivery.housekeeping import Housekeeping
from mssendmail.delivery.pickup import maildrop_names, pickup
from mssendmail.delivery.skips import SkipList, Stalled, describe
from mssendmail.errors import EX_TEMPFAIL, MssendmailError, exit_code, run_main
from mssendmail.spool import pause
from mssendmail.spool.layout import (
    DEFERRED,
    QUEUE,
    STATE,
    Spool,
)
from mssendmail.transport import from_config

log = logging.getLogger("mssendmail.delivery.worker")

PROG = "mssendmail-worker"
RESCAN_SECONDS = 1.0
RELIST_SECONDS = 5.0  # a maildrop/ backlog is listed again this often without a trigger
PREPARE_AHEAD = 2  # threads beyond CONCURRENCY that prepare while others wait on Graph
PICKUP_BATCH = 64  # small rounds keep dispatch going while a big maildrop/ drains
FLUSH_MIN_INTERVAL = 60.0
TIDY_SECONDS = 5.0  # how often due SENT_ITEMS=delete jobs are looked at
ERROR_PAUSE = 10.0  # after an unexpected error (disk full, a bug): stop dispatching this long
STOP_GRACE = 5.0  # after SIGTERM, in-flight work gets this long before the worker exits
PICKUP_BACKOFF_MIN = 1.0  # pickup short of fds, memory or disk: first wait, doubling
PICKUP_BACKOFF_MAX = 60.0


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
        self.pending = fairness.FairQueue()  # round-robin across submitter uids
        self.uids: dict[str, int] = {}  # queue id -> trusted submitter uid
        self.cap = ctx.cfg.optional_int("MAX_QUEUED_PER_USER")
        self.own_uid = os.geteuid()  # smtpd's and notices' mail: never capped
        self.last_scan = 0.0
        self.stopping = threading.Event()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.fifo_fd = -1
        self.fifo_keep = -1
        self.last_flush = 0.0
        self.housekeeping = Housekeeping(self.spool, ctx.cfg)
        self.stall_until = 0.0
        self.triggered = True
        self.last_listing = 0.0
        self.backlog: collections.deque[str] = collections.deque()
        # Pickup fsyncs every copy: in its own thread
        # it no longer holds up dispatch in this one.
        self.pickup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pickup")
        self.picking: Future[list[str]] | None = None
        self.skips = SkipList()  # maildrop/ entries tried once that can be neither queued nor moved
        self.pickup_delay = 0.0
        self.pickup_stall_until = 0.0
        self.pickup_gave_up = False  # --once: pickup stalled, exit 75 when done
        self.listing_picked = 1  # messages queued from the current listing (1: list at start)
        self.pending_ids: set[str] = set()
        self.outcomes: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.unfinished = 0  # in-flight work abandoned at STOP_GRACE after SIGTERM
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
                if self.spool.due_at(qid) <= now:
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
                self.spool.set_due(qid, now)
            except FileNotFoundError:
                continue
        log.info(logs.kv(event="flush"))

    def refill(self, now: float) -> None:
        """Fill the send list: a full scan when it ran dry, else due deferred mail.

        queue/ is listed only when the list is empty; a big backlog would
        otherwise cost a listing of every queued file each second.
        """
        if not self.pending:
            self.pending = fairness.FairQueue()
            self.pending_ids = set()
            self.add_pending(self.due(now))
            self.last_scan = now
        elif now - self.last_scan >= RESCAN_SECONDS:
            self.last_scan = now
            self.add_pending(self.due_deferred(now))

    def add_pending(self, items: list[tuple[str, str]]) -> None:
        for item in items:
            if item[0] not in self.pending_ids and item[0] not in self.inflight:
                self.pending.append(item, self.uid_of(*item))
                self.pending_ids.add(item[0])

    def uid_of(self, qid: str, area: str) -> int:
        uid = self.uids.get(qid)
        if uid is None:
            uid = self.uids[qid] = fairness.envelope_uid(self.spool.path(area, qid))
        return uid

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
                result = future.result()
                self.outcomes[result] += 1
                if result is not Outcome.DEFERRED:
                    self.uids.pop(qid, None)  # gone from the queue (or back in queue/)

    def _beat_extra(self) -> dict[str, object]:
        return {"mime_fixed": self.ctx.mime_fixes.snapshot()}  # since this worker started

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
        runs low; see _relist() for when it is listed again.
        """
        if self.picking is not None:
            if not self.picking.done():
                return True
            done, self.picking = self.picking, None
            self.add_pending([(qid, QUEUE) for qid in self._picked(done, now)])
        if self.stopping.is_set() or self.pickup_gave_up or now < self.pickup_stall_until:
            return False
        if self._relist(now):
            self.triggered = False
            self.last_listing = now
            self.listing_picked = 0
            try:
                self.backlog = collections.deque(self.fair_listing())
            except OSError as exc:  # out of fds or memory
                self._stall_pickup(exc, now)
                return False
        elif len(self.pending) >= PICKUP_BATCH:
            return False
        batch = [self.backlog.popleft() for _ in range(min(PICKUP_BATCH, len(self.backlog)))]
        if not batch:
            return False
        self.picking = self.pickup_pool.submit(self._pickup, batch)
        return True

    def _relist(self, now: float) -> bool:
        """Whether to list maildrop/ again now.

        When the backlog is used up: if a trigger arrived, a second passed,
        or the worker is idle. While a backlog remains (one user's flood),
        at most once a second after a trigger and every RELIST_SECONDS
        anyway: another user's new message must not wait for the whole
        backlog, and the new listing is round-robin across users again.
        """
        since = now - self.last_listing
        if self.backlog:
            return since >= RESCAN_SECONDS and (self.triggered or since >= RELIST_SECONDS)
        idle = not self.pending and not self.inflight
        if not (idle or self.triggered or since >= RESCAN_SECONDS):
            return False
        # --once: the last listing brought nothing new; stop listing
        return not (self.once and not self.listing_picked and not self.triggered)

    def fair_listing(self) -> list[str]:
        """maildrop/ round-robin across owners; over MAX_QUEUED_PER_USER waits there."""
        groups = fairness.owners(self.spool, maildrop_names(self.spool))
        if self.cap is not None:
            queued = collections.Counter(self.uids.values())
            over = []
            for uid, names in groups.items():
                if uid == self.own_uid:
                    continue
                room = max(0, self.cap - queued[uid])
                if len(names) >= room:
                    over.append(uid)
                del names[room:]
            fairness.publish_over_cap(self.spool, over)
        return list(fairness.interleave(groups.values()))

    def _picked(self, done: Future[list[str]], now: float) -> list[str]:
        """The ids a finished pickup batch queued; a stall backs pickup off."""
        try:
            picked = done.result()
        except Exception as exc:  # short of fds, memory or disk, or a bug: the originals stay
            picked = exc.queued if isinstance(exc, Stalled) else []
            self._stall_pickup(exc.cause if isinstance(exc, Stalled) else exc, now)
        else:
            self.pickup_delay = 0.0
        self.listing_picked += len(picked)
        return picked

    def _stall_pickup(self, exc: BaseException, now: float) -> None:
        """Back pickup off (doubling up to a minute); --once gives it up and exits 75."""
        self.pickup_delay = min(PICKUP_BACKOFF_MAX, max(PICKUP_BACKOFF_MIN, self.pickup_delay * 2))
        self.pickup_stall_until = now + self.pickup_delay
        self.backlog.clear()  # listed again after the pause
        self.pickup_gave_up = self.once
        log.error(logs.kv(event="pickup-stalled", error=describe(exc), retry_in=self.pickup_delay))

    def _pickup(self, batch: list[str]) -> list[str]:
        try:
            return pickup(
                self.spool,
                self.ctx.cfg.max_message_size,
                names=batch,
                skips=self.skips,
                owners=self.uids,
            )
        finally:
            self.poke()

    def run_service(self) -> int:
        self.open_trigger()
        while not self.stopping.is_set():
            if self.reload_asked.is_set():
                self.reload_asked.clear()
                self.reload()
            now = self.ctx.now()
            heartbeat.beat(self.spool, now, self.once, len(self.inflight), **self._beat_extra())
            self.housekeeping.tick(now)
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
            self.housekeeping.cfg = fresh.cfg

    def close(self) -> None:
        for ctx in [*self.retired, self.ctx]:
            ctx.transport.close()

    def tidy_sent_items(self, now: float) -> None:
        """SENT_ITEMS=delete: one clean-up round at a time, in a pool thread."""
        if now - self.last_tidy < TIDY_SECONDS or not (self.tidying is None or self.tidying.done()):
            return
        self.last_tidy = now
        self.tidying = self.pool.submit(cleanup.run_due, self.ctx)

    def run_once(self) -> int:
        self.housekeeping.recover(self.ctx.now())
        heartbeat.beat(
            self.spool, self.ctx.now(), self.once, len(self.inflight), **self._beat_extra()
        )
        while not self.stopping.is_set():
            if not self.step():
                break
            self.wait(0.05)  # finished sends and pickups poke us
        self.drain_inflight()
        while cleanup.run_due(self.ctx) >= cleanup.BATCH:  # SENT_ITEMS=delete jobs now due
            pass
        self.housekeeping.expire_sent(self.ctx.now())
        now = self.ctx.now()
        if pause.queue_paused_until(self.spool) > now or self.stall_until > now:
            return EX_TEMPFAIL
        return EX_TEMPFAIL if self.pickup_gave_up else 0

    def drain_inflight(self) -> None:
        if self.stopping.is_set():
            # SIGTERM: in-flight work gets STOP_GRACE seconds, not as long as
            # a hostile message or a slow upload would take. What is left
            # stays claimed in active/; the kernel drops the flocks when we
            # exit and the next start recovers it (the resend window is the
            # same as after kill -9).
            running: list[Future[Any]] = list(self.inflight.values())
            if self.picking is not None:
                running.append(self.picking)
            _, late = futures_wait(running, timeout=STOP_GRACE)
            if late:
                self.unfinished = len(late)
                return
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
        policy=RetryPolicy.from_config(cfg),
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
    # Whoever starts it (an admin's shell has umask 022): logs and spool
    # files it creates are never world-readable.
    os.umask(0o027)
    cfg = config.load(args.config)
    # The same steps as `mssendmail-queue check`: one line and 78, not a traceback.
    startup.validate(cfg)
    logs.setup(cfg.log_dir, args.verbose)
    concurrency = startup.concurrency(cfg)
    cpu = affinity.apply(cfg.get("WORKER_CPU"))  # before any thread starts
    ctx = build_context(cfg)
    cleanup.enabled(ctx)  # SENT_ITEMS must be keep or delete: exit 78 now
    protection.validate(ctx)  # MAILBOX_RATE, DAILY_RECIPIENT_LIMIT
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
    if worker.unfinished:
        log.warning(logs.kv(event="stop-timeout", unfinished=worker.unfinished, grace=STOP_GRACE))
        logging.shutdown()
        # Pool threads still run (a long parse, a slow request): do not wait
        # for them at interpreter exit. Their messages stay in active/.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
