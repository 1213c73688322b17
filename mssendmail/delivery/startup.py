"""The worker's start-up validation, shared with `mssendmail-queue check`.

Job: decide, before the worker starts, whether it can run: the config file
parses (no line python-dotenv would skip), every key whose
bad value would stop it (numbers, durations, transport, endpoints, proxy
and CA), the credential, SENDER and the address policy, the spool and the
log directory. The worker runs ``validate()`` and exits with its one-line
error; `check` shows each step as PASS or FAIL. Both call the same steps,
so a `check` with no FAIL here means the worker starts.

Every failure is a ConfigError (exit 78, EX_CONFIG): none of them goes away
by itself, so systemd must not restart the worker in a loop
(RestartPreventExitStatus=78). That includes a missing or unusable spool:
QUEUE_DIR is wrong or `mssendmail-queue init` was not run.

Reads: the config, the CLIENT_CERTIFICATE / FEDERATED_TOKEN_FILE files, the
ALIASES file, QUEUE_DIR and LOG_DIR (existence and access only).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mssendmail.config import Config
from mssendmail.errors import ConfigError, MssendmailError
from mssendmail.spool.layout import DIR_MODES, Spool

MAX_CONCURRENCY = 64
DURATIONS = (
    "RETRY_MIN",
    "RETRY_MAX",
    "MAX_AGE",
    "SENT_RETENTION",
    "CORRUPT_RETENTION",
    "GRAPH_TIMEOUT",
)

Step = Callable[[Config], str]  # returns what it saw; raises MssendmailError


def concurrency(cfg: Config) -> int:
    value = cfg.integer("CONCURRENCY")
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(f"CONCURRENCY must be between 1 and {MAX_CONCURRENCY}")
    return value


def is_graph(cfg: Config) -> bool:
    return cfg.get("TRANSPORT").lower() == "graph"


def check_settings(cfg: Config) -> str:
    """Every key the worker parses at start-up or later in its loop."""
    from mssendmail.delivery import affinity

    cfg.check_syntax()  # python-dotenv only warns and skips the line
    cfg.max_message_size  # noqa: B018 - validates the key
    for key in DURATIONS:
        cfg.seconds(key)
    concurrency(cfg)
    cfg.optional_int("MAX_ATTEMPTS")
    affinity.choose(cfg.get("WORKER_CPU"), os.sched_getaffinity(0), None)
    kind = cfg.get("TRANSPORT").lower()
    if kind == "graph":
        from mssendmail.graph.clouds import endpoints
        from mssendmail.graph.network import settings

        endpoints(cfg)
        settings(cfg)  # HTTPS_PROXY, NO_PROXY, CA_BUNDLE
    elif kind == "file":
        if not cfg.get("OUTBOX_DIR"):
            raise ConfigError("TRANSPORT=file needs OUTBOX_DIR; set it in the config")
    else:
        raise ConfigError(f"TRANSPORT={kind!r} is not known; use graph or file")
    return "every key the worker reads has a usable value"


def check_credential(cfg: Config) -> str:
    from mssendmail.graph.credentials import select

    spec = select(cfg)
    where = f" for app {spec.client_id} in tenant {spec.tenant}" if spec.client_id else ""
    return f"exactly one credential: {spec.kind.replace('_', ' ')}{where}"


def check_sender(cfg: Config) -> str:
    from mssendmail.delivery.prepare import policy_for

    policy_for(cfg)  # SENDER, ALLOWED_FROM, ALIASES, DEAD_LETTER_NOTIFY's domain
    return f"mail is sent as {cfg.get('SENDER')}"


def check_spool(cfg: Config) -> str:
    """QUEUE_DIR and each of its directories exist and this process may use them."""
    spool = Spool(cfg.queue_dir)
    fix = "fix QUEUE_DIR or run 'mssendmail-queue init' as root"
    if not os.path.isdir(spool.root):
        raise ConfigError(f"QUEUE_DIR={spool.root} does not exist or is not a directory; {fix}")
    if not os.access(spool.root, os.X_OK):
        raise ConfigError(f"QUEUE_DIR={spool.root} cannot be entered by uid {os.geteuid()}; {fix}")
    for area in DIR_MODES:
        path = spool.dir(area)
        if not os.path.isdir(path):
            raise ConfigError(f"{path} is missing; {fix}")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError(
                f"{path} is not readable and writable by uid {os.geteuid()}; run the worker "
                "as user mssendmail, or run 'mssendmail-queue init' as root to repair owners"
            )
    return f"{spool.root} and its {len(DIR_MODES)} directories are usable by uid {os.geteuid()}"


def check_log_dir(cfg: Config) -> str:
    directory = cfg.log_dir
    if not directory:
        return "LOG_DIR unset: logs go to stderr only"
    probe = directory
    while not os.path.isdir(probe):  # the worker creates missing levels
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"LOG_DIR={directory}: {probe} is not writable; fix LOG_DIR or its owner")
    return f"LOG_DIR={directory} is writable"


def steps(cfg: Config) -> list[tuple[str, Step]]:
    """(name, step) in the order the worker runs them."""
    chosen: list[tuple[str, Step]] = [("settings", check_settings)]
    if is_graph(cfg):
        chosen.append(("credential", check_credential))
    chosen += [("sender", check_sender), ("spool", check_spool), ("logs", check_log_dir)]
    return chosen


def results(cfg: Config) -> list[tuple[str, str, bool]]:
    """(name, what was seen or the error, ok) of every step, for `check`."""
    out = []
    for name, step in steps(cfg):
        try:
            out.append((name, step(cfg), True))
        except MssendmailError as exc:
            out.append((name, str(exc), False))
    return out


def validate(cfg: Config) -> None:
    """Raise the first step's ConfigError; the worker exits 78 with it."""
    for _, step in steps(cfg):
        step(cfg)
