"""The `mssendmail-queue check` checklist: is this setup able to deliver mail?

Each check returns PASS, WARN or FAIL with one line saying what was seen
and, when it is not PASS, what to do. In order: the config parses and its
values are usable (unknown keys flagged), who may send as which From
(ALLOWED_FROM, ALLOWED_FROM_USERS), exactly one credential, SENDER
and the address policy, the secrets file is not readable by everyone, the
spool is usable and has the modes `init` gives it, LOG_DIR, a token can be
acquired, the token's ``roles`` claim holds Mail.Send (FAIL without) and
Mail.ReadWrite (WARN without: needed above ~3 MB), the worker's heartbeat
is fresh, the trigger FIFO exists with its mode and has a reader, and the
queue is not paused. The config, credential, sender, spool and logs steps
are the worker's start-up validation (delivery/startup.py), so when they
pass the worker starts.

The token is requested with an in-memory cache only: a check run as root
must not leave a root-owned cache in state/ for the worker to trip over.
The token itself is never printed, only the role names decoded from it
(without verifying the signature: we only read our own token's claims).
"""

from __future__ import annotations

import errno
import os
import stat
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

from mssendmail.config import Config, load
from mssendmail.delivery import startup
from mssendmail.delivery.limits import Limits
from mssendmail.errors import EX_CONFIG, EX_OK, MssendmailError
from mssendmail.spool import meta, pause
from mssendmail.spool.layout import (
    DIR_MODES,
    HEARTBEAT_FILE,
    ROOT_MODE,
    TRIGGER_MODE,
    Spool,
    pid_alive,
    service_ids,
)

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
HEARTBEAT_FRESH = 120.0
# A timer-driven --once worker beats only when it runs.
ONCE_FRESH = 15 * 60.0
REQUIRED_ROLE = "Mail.Send"
LARGE_ROLE = "Mail.ReadWrite"


@dataclass
class Result:
    status: str
    name: str
    detail: str

    def line(self, color: bool = False) -> str:
        tag = self.status
        if color:
            code = {PASS: "32", WARN: "33", FAIL: "31"}[self.status]
            tag = f"\033[{code}m{tag}\033[0m"
        # Wrapped under the name so a long error still fits 80 columns.
        text = textwrap.fill(
            f"{self.name}: {self.detail}",
            width=74,
            break_on_hyphens=False,
            break_long_words=True,
        )
        return f"{tag}  " + text.replace("\n", "\n      ")


TokenFetcher = Callable[[Config], str]


def fetch_token(cfg: Config) -> str:
    """A fresh Graph token for the configured credential (memory cache only)."""
    from mssendmail.graph.clouds import endpoints
    from mssendmail.graph.credentials import TokenProvider, select
    from mssendmail.graph.network import settings

    provider = TokenProvider(select(cfg), endpoints(cfg), None, network=settings(cfg))
    try:
        return provider.token()
    finally:
        provider.close()


def run(config_path: str | None, fetch: TokenFetcher = fetch_token) -> list[Result]:
    """Every check, in order; later checks are skipped when an earlier one makes them moot."""
    results: list[Result] = []
    try:
        cfg = load(config_path)
    except MssendmailError as exc:
        return [Result(FAIL, "config", str(exc))]
    results.append(check_config(cfg))
    results.append(check_allowed_from(cfg))
    graph = startup.is_graph(cfg)
    cred: Result | None = None
    if graph:
        cred = check_credentials(cfg)
        results.append(cred)
    else:
        results.append(
            Result(
                WARN,
                "transport",
                f"TRANSPORT={cfg.get('TRANSPORT')}: mail is not sent through Graph",
            )
        )
    results.append(_step(cfg, "sender", startup.check_sender))
    results.append(check_secrets_file(cfg))
    spool = Spool(cfg.queue_dir)
    access = _step(cfg, "spool", startup.check_spool)
    results.append(access if access.status == FAIL else check_spool_modes(spool))
    if cfg.log_dir:
        results.append(_step(cfg, "logs", startup.check_log_dir))
    if cred is not None and cred.status == PASS:
        results.extend(_token_checks(cfg, spool, fetch))
    return results + _queue_checks(cfg, spool)


def _token_checks(cfg: Config, spool: Spool, fetch: TokenFetcher) -> list[Result]:
    """A token, and what it grants: run only once the credentials look right."""
    token_result, token = check_token(cfg, fetch)
    if token is None:
        return [token_result]
    from mssendmail.admin import safety

    return [token_result, *check_roles(token), *safety.checks(cfg, spool, token)]


def _queue_checks(cfg: Config, spool: Spool) -> list[Result]:
    """Budgets, the worker's heartbeat, the trigger FIFO and a pause."""
    from mssendmail.admin.safety import check_budget

    results = [*check_budget(spool), check_worker(spool), check_trigger(spool)]
    paused = check_pause(spool, cfg=cfg)
    if paused is not None:
        results.append(paused)
    return results


def check_allowed_from(cfg: Config) -> Result:
    """The trust model: which local user may send as which From (issue 12).

    Whoever can run sendmail on this host may put any From: in a message, so
    every address ALLOWED_FROM allows is one every local user may send as
    (an @domain entry: every mailbox of the domain), except the addresses
    ALLOWED_FROM_USERS reserves to named users and groups
    (mssendmail.delivery.trust). Everything else is rewritten to SENDER.
    """
    from mssendmail.delivery import trust

    name = "allowed-from"
    try:
        everyone = trust.parse_grants(
            "ALLOWED_FROM", cfg.addresses("ALLOWED_FROM"), "ALLOWED_FROM=app@example.com"
        )
        rules = trust.parse_users(cfg.get("ALLOWED_FROM_USERS"))
    except MssendmailError as exc:
        return Result(FAIL, name, str(exc))
    sender = cfg.get("SENDER") or "SENDER"
    shown = [sender, *everyone.shown()]
    text = f"every local user may send as {', '.join(shown)}"
    if rules:
        labels = [f"group {r.who[1:]}" if r.who.startswith("@") else r.who for r in rules]
        text += "; reserved by ALLOWED_FROM_USERS to "
        text += "; ".join(f"{lab}: {', '.join(r.grants.shown())}" for lab, r in zip(labels, rules))
        text += "; root may use all of these; smtpd mail counts as its AUTH login, else as "
        text += "the service user"
    text += "; any other From is sent as SENDER"
    unknown = [r.who for r in rules if not _known(r.who)]
    if unknown:
        return Result(WARN, name, f"{text}; no such user or group: {', '.join(unknown)} (typo?)")
    if everyone.domains:
        return Result(
            WARN,
            name,
            f"{text}. ALLOWED_FROM has a domain: every local user may send as any mailbox "
            "of it the app can reach; list single addresses, reserve mailboxes with "
            "ALLOWED_FROM_USERS, or scope the app with an application access policy",
        )
    return Result(PASS, name, f"{text}; the app's mailbox scope still applies")


def _known(who: str) -> bool:
    """Is an ALLOWED_FROM_USERS name a user, a uid, or (@name) a group on this host?"""
    import grp
    import pwd

    try:
        if who.startswith("@"):
            grp.getgrnam(who[1:])
        elif not who.isdigit():
            pwd.getpwnam(who)
    except KeyError:
        return False
    return True


def check_config(cfg: Config) -> Result:
    name = "config"
    if not cfg.file_readable:
        if cfg.path and os.path.exists(cfg.path):
            return Result(FAIL, name, f"cannot read {cfg.path}; run as root")
        return Result(WARN, name, f"{cfg.path} does not exist; running on defaults and environment")
    problem = cfg.syntax_problem()
    if problem is not None:
        return Result(FAIL, name, problem)
    try:
        startup.check_settings(cfg)
        Limits.from_config(cfg)
    except MssendmailError as exc:
        return Result(FAIL, name, f"{cfg.path}: {exc}")
    unknown = cfg.unknown_keys()
    if unknown:
        return Result(
            WARN, name, f"{cfg.path}: unknown keys {', '.join(unknown)} (typos?); they are ignored"
        )
    return Result(PASS, name, f"{cfg.path} parses, no unknown keys")


def _step(cfg: Config, name: str, step: startup.Step) -> Result:
    """One of the worker's start-up steps as a check: its FAIL is why the worker exits 78."""
    try:
        return Result(PASS, name, step(cfg))
    except MssendmailError as exc:
        return Result(FAIL, name, str(exc))


def check_credentials(cfg: Config) -> Result:
    return _step(cfg, "credential", startup.check_credential)


def _mode_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    if st.st_mode & stat.S_IROTH:
        return f"{path} is readable by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWOTH:
        return f"{path} is writable by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_secrets_file(cfg: Config) -> Result:
    name = "secrets"
    paths = [p for p in (cfg.path, cfg.get("CLIENT_CERTIFICATE")) if p and os.path.exists(p)]
    if not paths:
        return Result(WARN, name, "no config file: secrets come from the environment")
    for path in paths:
        problem = _mode_problem(path)
        if problem:
            return Result(FAIL, name, f"{problem}; chmod 0640 {path}")
    return Result(PASS, name, f"{', '.join(paths)} not readable by everyone")


def check_spool_modes(spool: Spool) -> Result:
    name = "spool"
    expected = {spool.root: ROOT_MODE, **{spool.dir(a): m for a, m in DIR_MODES.items()}}
    owner = service_ids()
    # As init does: run by root the tree belongs to the service user; a normal
    # user's quick-start spool (init as that user) belongs to that user.
    mine = (os.geteuid(), os.getegid()) if os.geteuid() != 0 else None
    wrong: list[str] = []
    for path, mode in expected.items():
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            wrong.append(f"{path} missing")
            continue
        if not stat.S_ISDIR(st.st_mode):
            wrong.append(f"{path} is not a directory")
        elif stat.S_IMODE(st.st_mode) != mode:
            wrong.append(f"{path} mode {stat.S_IMODE(st.st_mode):04o}, want {mode:04o}")
        elif owner is not None and (st.st_uid, st.st_gid) not in (owner, mine):
            wrong.append(f"{path} not owned by mssendmail:mssendmail")
    if wrong:
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        return Result(FAIL, name, f"{wrong[0]}{more}; run 'mssendmail-queue init' as root")
    return Result(
        PASS, name, f"{spool.root} and its {len(DIR_MODES)} directories have the right modes"
    )


def check_token(cfg: Config, fetch: TokenFetcher) -> tuple[Result, str | None]:
    from mssendmail.graph.clouds import endpoints
    from mssendmail.graph.network import settings

    name = "token"
    via = ""
    try:
        host = endpoints(cfg).authority_host
        via = settings(cfg).describe(host)  # which proxy and CA: the usual suspects
        started = time.monotonic()
        token = fetch(cfg)
    except MssendmailError as exc:
        return Result(FAIL, name, f"{exc} ({via})" if via else str(exc)), None
    ms = int((time.monotonic() - started) * 1000)
    return Result(PASS, name, f"acquired from {host} in {ms} ms ({via})"), token


def check_roles(token: str) -> list[Result]:
    from mssendmail.graph.credentials import token_claims

    claims = token_claims(token)
    if not claims:
        return [Result(WARN, "roles", "the token is not a JWT; cannot read its roles")]
    raw = claims.get("roles")
    roles = sorted(r for r in raw if isinstance(r, str)) if isinstance(raw, list) else []
    if not roles:
        # Exchange RBAC for Applications grants mail rights inside Exchange,
        # so a correctly scoped app gets a token with no Graph roles at all.
        return [
            Result(
                WARN,
                "Mail.Send",
                "the token carries no application roles: right only if Exchange RBAC for "
                "Applications grants the mail rights; confirm with "
                "'mssendmail-queue test ADDRESS --wait'",
            )
        ]
    return [_send_role(roles), _large_role(roles)]


def _send_role(roles: list[str]) -> Result:
    shown = ", ".join(roles)
    if REQUIRED_ROLE in roles:
        return Result(PASS, "Mail.Send", f"granted (token roles: {shown})")
    return Result(
        FAIL,
        "Mail.Send",
        f"NOT granted (token roles: {shown}); add the Microsoft Graph application "
        "permission Mail.Send to the app and grant admin consent",
    )


def _large_role(roles: list[str]) -> Result:
    if LARGE_ROLE in roles:
        return Result(PASS, "Mail.ReadWrite", "granted: messages over 3 MB can be sent")
    return Result(
        WARN,
        "Mail.ReadWrite",
        "not granted: messages over about 3 MB will fail; add it if you send those",
    )


def check_worker(spool: Spool, now: float | None = None) -> Result:
    name = "worker"
    now = time.time() if now is None else now
    path = spool.state_path(HEARTBEAT_FILE)
    beat = meta.read_json(path)
    when = beat.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        return Result(
            FAIL, name, "no heartbeat: the worker has never run; start mssendmail-worker.service"
        )
    age = now - float(when)
    mode = beat.get("mode")
    pid = beat.get("pid")
    # A --once run's last heartbeat stays fresh after it has exited: ask the pid.
    if age < HEARTBEAT_FRESH and (mode != "once" or _pid_alive(pid)):
        return Result(PASS, name, f"running (pid {pid}, {mode}), heartbeat {int(age)}s ago")
    if mode == "once" and age < ONCE_FRESH:
        return Result(PASS, name, f"timer-driven --once run {int(age)}s ago, finished")
    return Result(
        FAIL,
        name,
        f"last heartbeat {int(age)}s ago (pid {pid}); "
        "is mssendmail-worker running? see journalctl -u mssendmail-worker",
    )


def _pid_alive(pid: object) -> bool:
    """The heartbeat's pid is a live process; anything but a plausible pid is not."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 22:
        return False
    return pid_alive(pid)


def check_trigger(spool: Spool) -> Result:
    name = "trigger"
    path = spool.trigger_path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Result(FAIL, name, f"{path} missing; run 'mssendmail-queue init' as root")
    if not stat.S_ISFIFO(st.st_mode):
        return Result(FAIL, name, f"{path} is not a FIFO; remove it, run 'mssendmail-queue init'")
    mode = stat.S_IMODE(st.st_mode)
    if mode != TRIGGER_MODE:
        return Result(
            FAIL,
            name,
            f"{path} mode {mode:04o}, want {TRIGGER_MODE:04o}; run 'mssendmail-queue init'",
        )
    # Opening a FIFO for writing without blocking fails with ENXIO when nobody
    # reads it: that tells whether a worker is listening. Nothing is written.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return Result(
                WARN, name, f"{path} has no reader: new mail waits for the next worker run"
            )
        return Result(FAIL, name, f"cannot open {path}: {exc.strerror}")
    os.close(fd)
    return Result(PASS, name, f"{path} is a FIFO, mode {mode:04o}, a worker is listening")


def check_pause(spool: Spool, now: float | None = None, cfg: Config | None = None) -> Result | None:
    from mssendmail.admin import paused

    now = time.time() if now is None else now
    found = pause.active(spool, now)
    if found is None:
        return None
    text = f"PAUSED {paused.describe(found, now)}; "
    if cfg is not None and found.fingerprint:
        from mssendmail.graph import fingerprint

        if fingerprint.of(cfg) != found.fingerprint:
            text += (
                "the credential settings changed since: the worker lifts it when it starts "
                "or reloads (systemctl reload mssendmail-worker), or run 'mssendmail-queue resume'"
            )
            return Result(FAIL, "delivery", text)
    return Result(FAIL, "delivery", text + paused.HINT)


def exit_status(results: list[Result]) -> int:
    """78 (EX_CONFIG) on any FAIL, else 0."""
    return EX_CONFIG if any(r.status == FAIL for r in results) else EX_OK
