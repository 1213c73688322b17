"""SIGHUP: re-read the configuration without dropping the mail in flight.

`systemctl reload mssendmail-worker` (ExecReload=) sends SIGHUP. The worker
loads the config again, runs the same start-up validation as at start
(startup.py), and builds a new transport and delivery context. Sends
already in flight finish with the old context, which holds its own
transport; new attempts use the new one. A config that does not load or
validate changes nothing: the old one keeps running and one line says why.

Some settings only take effect at a restart, since they shape the process
itself: QUEUE_DIR (the spool it has open), CONCURRENCY (its thread pool) and
WORKER_CPU (its CPU affinity). A reload that changes QUEUE_DIR is refused;
the other two are logged as needing a restart.
"""

from __future__ import annotations

import logging

from mssendmail import config, logs
from mssendmail.delivery import startup
from mssendmail.delivery.attempt import Context
from mssendmail.errors import MssendmailError

log = logging.getLogger("mssendmail.delivery.reload")

RESTART_ONLY = ("CONCURRENCY", "WORKER_CPU")


def reload(old: Context, config_path: str | None, verbose: bool) -> Context | None:
    """The new context, or None (logged) when the new config is unusable."""
    from mssendmail.delivery.worker import build_context, lift_stale_pause

    try:
        cfg = config.load(config_path)
        startup.validate(cfg)
        if cfg.queue_dir != old.cfg.queue_dir:
            raise MssendmailError(
                f"QUEUE_DIR changed to {cfg.queue_dir}; that needs a restart, not a reload"
            )
        fresh = build_context(cfg, gate=old.gate)
    except (MssendmailError, OSError) as exc:
        log.error(logs.kv(event="reload-failed", error=str(exc), effect="old config kept"))
        return None
    logs.setup(cfg.log_dir, verbose)
    later = [k for k in RESTART_ONLY if cfg.get(k) != old.cfg.get(k)]
    log.info(logs.kv(event="reloaded", config=cfg.path, restart_needed_for=",".join(later)))
    lift_stale_pause(fresh)
    return fresh
