"""Housekeeping: what killed processes leave behind, sent records past SENT_RETENTION,
and quarantined entries past CORRUPT_RETENTION.

The worker calls `tick()` every loop; each job runs only when its interval
has passed, and `recover()` runs once at the start of a --once run.
"""

from __future__ import annotations

import logging

from mssendmail import logs
from mssendmail.config import Config
from mssendmail.delivery import idempotency, outcome
from mssendmail.spool import intake, meta
from mssendmail.spool.layout import CORRUPT, SENT, Spool, sweep_temps

log = logging.getLogger("mssendmail.delivery.housekeeping")

SWEEP_INTERVAL = 600.0
RECOVER_SECONDS = 60.0


class Housekeeping:
    def __init__(self, spool: Spool, cfg: Config) -> None:
        self.spool = spool
        self.cfg = cfg
        self.last_sweep = 0.0
        self.last_recover = 0.0

    def tick(self, now: float) -> None:
        """The service loop's share: expire sent records, recover what the dead left."""
        self.expire_sent(now)
        if now - self.last_recover >= RECOVER_SECONDS:
            self.last_recover = now
            self.recover(now)

    def recover(self, now: float) -> None:
        """What killed processes leave behind: claims, temp files, parked sent mail."""
        idempotency.recover(self.spool, now)  # marks each one's outcome unknown
        for name in sweep_temps(self.spool, now):
            log.info(logs.kv(event="removed-temp", file=name))
        outcome.sweep_sent(self.spool, now)
        for qid in meta.orphans(self.spool):  # killed between the sent record and meta/ removal
            meta.remove(self.spool, qid)

    def expire_sent(self, now: float) -> None:
        """Forget sent-mail records older than SENT_RETENTION."""
        if now - self.last_sweep < SWEEP_INTERVAL:
            return
        self.last_sweep = now
        try:
            self.spool.expire(SENT, self.cfg.seconds("SENT_RETENTION"), now)
        except OSError as exc:  # the spool went away under us: say so, keep running
            log.error(logs.kv(event="sweep-error", dir=self.spool.dir(SENT), error=exc.strerror))
        self.expire_corrupt(now)

    def expire_corrupt(self, now: float) -> None:
        """Remove quarantined entries older than CORRUPT_RETENTION (run with expire_sent)."""
        try:
            removed = intake.expire_corrupt(self.spool, self.cfg.seconds("CORRUPT_RETENTION"), now)
        except OSError as exc:
            log.error(logs.kv(event="sweep-error", dir=self.spool.dir(CORRUPT), error=exc.strerror))
            return
        if removed:
            log.info(logs.kv(event="corrupt-expired", entries=removed))
