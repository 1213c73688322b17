"""``mssendmail-smtpd``: the SMTP submission listener for SMTP-only programs.

NAME
    mssendmail-smtpd -- accept mail over SMTP and queue it for Graph

SYNOPSIS
    mssendmail-smtpd [--config PATH]
    mssendmail-smtpd --hash-password [USER] < password

DESCRIPTION
    Grafana, Keycloak, printers and NAS boxes speak only SMTP. This daemon
    listens on SMTPD_LISTEN (default 127.0.0.1:2525; a comma list, IPv6 as
    [::1]:2525) or on the sockets systemd passes (LISTEN_FDS), and queues
    every accepted message in the same spool as ``mssendmail``, so the same
    worker, retries and dead-letter handling apply (see mssendmail.smtp.protocol).

    Optional STARTTLS (SMTPD_TLS_CERT, SMTPD_TLS_KEY) and AUTH PLAIN/LOGIN
    against SMTPD_USERS_FILE, lines of ``user:hash``; ``--hash-password``
    makes a hash (scrypt) from a password read from stdin. Once users exist,
    every client must authenticate. AUTH is offered only after STARTTLS,
    except on a loopback listener.

    At most SMTPD_MAX_CLIENTS sessions at once; the next one gets a 421.
    Messages over MAX_MESSAGE_SIZE get a 552. SIGTERM stops accepting, lets
    messages being written finish, tells open sessions 421 and exits 0.

SECURITY
    Never an open relay: it refuses to start on a non-loopback address
    unless SMTPD_USERS_FILE is set, and there it also needs TLS, so that
    passwords never cross the network in clear. Passwords are never logged.
    Run it as the mssendmail user (util/mssendmail-smtpd.service).

EXIT STATUS
    0 after SIGTERM/SIGINT; 78 (EX_CONFIG) for an unusable configuration
    (one line on stderr); 71 (EX_OSERR) when the address cannot be bound.

FILES
    /etc/mssendmail/.env, SMTPD_USERS_FILE, QUEUE_DIR/maildrop
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from mssendmail import config, logs
from mssendmail.argv import Parser
from mssendmail.errors import EX_OK, CannotListen, ConfigError, UsageError, run_main
from mssendmail.logs import kv
from mssendmail.smtp import guard
from mssendmail.smtp.protocol import QueueHandler, Server, local_hostname
from mssendmail.spool.layout import Spool

PROG = "mssendmail-smtpd"
log = logging.getLogger("mssendmail.smtp.smtpd")

SYSTEMD_FIRST_FD = 3
SHUTDOWN_GRACE = 10.0
BUSY_REPLY = b"421 4.7.0 Too many connections; try again later\r\n"
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down; try again later\r\n"

# scrypt at N=2**14, r=8, p=1 (16 MiB of memory): the cost OWASP lists for scrypt.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAX_N = 2**20
PBKDF2_MAX_ROUNDS = 10_000_000


# -- passwords ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$key`` (base64) for SMTPD_USERS_FILE."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_hash(encoded: str) -> None:
    """Raise ValueError unless ``encoded`` is a hash verify_password understands."""
    parts = encoded.split("$")
    if parts[0] == "scrypt" and len(parts) == 6:
        n, r, p = (int(x) for x in parts[1:4])
        if not (1 < n <= SCRYPT_MAX_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16):
            raise ValueError("scrypt parameters out of range")
    elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        if not 0 < int(parts[1]) <= PBKDF2_MAX_ROUNDS:
            raise ValueError("pbkdf2 rounds out of range")
    else:
        raise ValueError("not scrypt$N$r$p$salt$key or pbkdf2_sha256$rounds$salt$key")
    for part in parts[-2:]:
        base64.b64decode(part, validate=True)


def verify_password(password: bytes, encoded: str) -> bool:
    """Constant-time check of a password against a hash from check_hash-valid text."""
    parts = encoded.split("$")
    salt, key = base64.b64decode(parts[-2]), base64.b64decode(parts[-1])
    if parts[0] == "scrypt":
        n, r, p = (int(x) for x in parts[1:4])
        got = hashlib.scrypt(
            password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1024 * 1024, dklen=len(key)
        )
    else:
        got = hashlib.pbkdf2_hmac("sha256", password, salt, int(parts[1]), dklen=len(key))
    return hmac.compare_digest(got, key)


def load_users(path: str) -> dict[str, str]:
    """user -> hash from a ``user:hash`` file; '#' comments and blank lines allowed."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read SMTPD_USERS_FILE {path}: {exc}; fix the file") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        try:
            if not sep or not user:
                raise ValueError("expected user:hash")
            check_hash(encoded)
        except ValueError as exc:
            raise ConfigError(
                f"{path} line {number}: {exc}; make entries with '{PROG} --hash-password USER'"
            ) from None
        users[user] = encoded
    if not users:
        raise ConfigError(f"SMTPD_USERS_FILE {path} has no users; add one or unset it")
    return users


class Authenticator:
    """aiosmtpd authenticator for PLAIN and LOGIN against SMTPD_USERS_FILE."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        # Unknown users cost as much as known ones: no user enumeration by timing.
        self.dummy = hash_password(secrets.token_hex(8))

    def __call__(
        self, server: Server, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        encoded = self.users.get(user)
        ok = verify_password(auth_data.password, encoded or self.dummy) and encoded is not None
        if ok:
            return AuthResult(success=True, auth_data=user)
        log.warning(
            kv(
                event="auth-failed",
                mechanism=mechanism,
                user=repr(user),
                client=server.client_text(session),
            )
        )
        return AuthResult(success=False, handled=False)


# -- listeners ---------------------------------------------------------------


def parse_listen(value: str) -> list[tuple[str, int]]:
    """``host:port`` items, comma separated; IPv6 as ``[::1]:port``; ``*`` or empty = all."""
    result: list[tuple[str, int]] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.rpartition(":")
            if ":" in host:
                port = ""  # a bare IPv6 address: the port is ambiguous without brackets
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"SMTPD_LISTEN item {item!r} is not host:port; write e.g. 127.0.0.1:2525"
            )
        result.append(("" if host == "*" else host, int(port)))
    if not result:
        raise ConfigError("SMTPD_LISTEN is empty; set it to e.g. 127.0.0.1:2525")
    return result


def is_loopback(host: str) -> bool:
    """True only if every address the host names is a loopback address."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def activated_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (sd_listen_fds), or none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # children must not think the fds are theirs
    socks = []
    for fd in range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks


def socket_is_loopback(sock: socket.socket) -> bool:
    if sock.family == socket.AF_UNIX:
        return True  # reachable only through file permissions on this host
    return is_loopback(str(sock.getsockname()[0]))


# -- the daemon --------------------------------------------------------------


@dataclass
class Settings:
    """Everything main() needs, checked before any socket is bound."""

    handler: QueueHandler
    listen: list[tuple[str, int]]
    max_clients: int
    tls: ssl.SSLContext | None = None
    authenticator: Authenticator | None = None
    sockets: list[socket.socket] = field(default_factory=list)
    deadlines: guard.Deadlines = field(default_factory=guard.Deadlines)


def tls_context(cfg: config.Config) -> ssl.SSLContext | None:
    cert, key = cfg.get("SMTPD_TLS_CERT"), cfg.get("SMTPD_TLS_KEY")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("STARTTLS needs both SMTPD_TLS_CERT and SMTPD_TLS_KEY; set both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load SMTPD_TLS_CERT/SMTPD_TLS_KEY: {exc}; fix them") from exc
    return context


def settings(cfg: config.Config, sockets: list[socket.socket]) -> Settings:
    """Validate the configuration, including the no-open-relay rule."""
    handler = QueueHandler(Spool(cfg.queue_dir), cfg.max_message_size, "smtpd", local_hostname())
    listen = [] if sockets else parse_listen(cfg.get("SMTPD_LISTEN"))
    max_clients = cfg.integer("SMTPD_MAX_CLIENTS")
    if max_clients < 1:
        raise ConfigError("SMTPD_MAX_CLIENTS must be at least 1")
    tls = tls_context(cfg)
    users_file = cfg.get("SMTPD_USERS_FILE")
    authenticator = Authenticator(load_users(users_file)) if users_file else None
    public = [f"{h or '*'}:{p}" for h, p in listen if not is_loopback(h)]
    public += [str(s.getsockname()) for s in sockets if not socket_is_loopback(s)]
    if public and authenticator is None:
        raise ConfigError(
            f"refusing to listen on non-loopback {', '.join(public)} without AUTH "
            "(it would be an open relay); set SMTPD_USERS_FILE or listen on 127.0.0.1"
        )
    if public and tls is None:
        raise ConfigError(
            f"AUTH on non-loopback {', '.join(public)} needs STARTTLS; "
            "set SMTPD_TLS_CERT and SMTPD_TLS_KEY"
        )
    return Settings(
        handler, listen, max_clients, tls, authenticator, sockets, guard.Deadlines.from_config(cfg)
    )


class _Busy(asyncio.Protocol):
    """Answers one connection over the limit with 421 and hangs up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_REPLY)
        transport.close()


class Daemon:
    """The listeners, the session count and the shutdown sequence."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: set[guard.GuardedServer] = set()
        self.servers: list[asyncio.Server] = []
        self.watchdog: asyncio.Task[None] | None = None

    def peer_ok(self, peer: object) -> bool:
        """SMTPD_MAX_PER_PEER for remote peers; loopback clients share one address."""
        host = guard.peer_host(peer)
        if host is None or is_loopback(host):
            return True
        same = sum(1 for s in self.sessions if guard.peer_host(s.peer) == host)
        return same <= self.settings.deadlines.per_peer  # this session is counted already

    def make_room(self) -> bool:
        """At SMTPD_MAX_CLIENTS: end the session idle longest, if idle STRESS_IDLE or more."""
        now = time.monotonic()
        idle = max(self.sessions, key=lambda s: s.waited(now), default=None)
        if idle is None or idle.waited(now) < guard.STRESS_IDLE:
            return False
        idle.end("server busy and you were idle")
        self.sessions.discard(idle)
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for session in list(self.sessions):
                why = session.late(now, self.settings.deadlines)
                if why is not None:
                    log.info(kv(event="session-ended", client=session.peer, reason=why))
                    session.end(why)

    def factory(self, loopback: bool) -> Callable[[], asyncio.BaseProtocol]:
        s = self.settings

        def make() -> asyncio.BaseProtocol:
            if len(self.sessions) >= s.max_clients and not self.make_room():
                return _Busy()
            session: guard.GuardedServer

            def done() -> None:
                self.sessions.discard(session)

            with warnings.catch_warnings():
                # AUTH without TLS on loopback is a deliberate choice, not a mistake.
                warnings.simplefilter("ignore")
                session = guard.GuardedServer(
                    s.handler,
                    peer_ok=self.peer_ok,
                    authenticator=s.authenticator,
                    auth_required=s.authenticator is not None,
                    auth_require_tls=not loopback,
                    tls_context=s.tls,
                    on_close=done,
                )
            self.sessions.add(session)
            return session

        return make

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        for sock in s.sockets:
            self.servers.append(
                await loop.create_server(self.factory(socket_is_loopback(sock)), sock=sock)
            )
        for host, port in s.listen:
            server = await loop.create_server(
                self.factory(is_loopback(host)), host or None, port, reuse_address=True
            )
            self.servers.append(server)
        for server in self.servers:
            for sock in server.sockets:
                log.info(kv(event="listening", address=sock.getsockname()))
        self.watchdog = asyncio.get_running_loop().create_task(self.watch())

    async def stop(self) -> None:
        """Stop accepting, let queue writes finish, then end every session with 421."""
        for server in self.servers:
            server.close()
        if self.watchdog is not None:
            self.watchdog.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.settings.handler.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            transport = session.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(SHUTDOWN_REPLY)
                transport.close()
        for server in self.servers:
            await server.wait_closed()


async def run(settings: Settings) -> None:
    daemon = Daemon(settings)
    await daemon.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info(kv(event="stopping"))
    await daemon.stop()


# -- command line --------------------------------------------------------------


def read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def hash_password_command(user: str | None) -> int:
    if user is not None and (not user or ":" in user or any(c.isspace() for c in user)):
        raise UsageError("a user name must be non-empty, without ':' or spaces")
    password = read_password()
    if not password:
        raise UsageError("empty password on stdin; pipe or type the password")
    encoded = hash_password(password)
    print(f"{user}:{encoded}" if user is not None else encoded)
    return EX_OK


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="SMTP listener that queues mail for mssendmail-worker.",
        epilog="exit status: 0 after SIGTERM, 71 cannot listen, 78 unusable config\n"
        "See mssendmail-smtpd(8).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default ${config.ENV_PATH_VAR}, then {config.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--hash-password",
        nargs="?",
        const="",
        metavar="USER",
        help="read a password from stdin, print a SMTPD_USERS_FILE entry (or just the hash)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def setup_logging(cfg: config.Config) -> None:
    """key=value lines to stderr and LOG_DIR, as the worker writes them (logs.py)."""
    logs.setup(cfg.log_dir)
    # aiosmtpd logs each command at INFO and deprecation chatter at WARNING.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C on a listener in the foreground is a normal stop, as SIGINT is.
    return run_main(PROG, lambda: serve(args), on_interrupt=EX_OK)


def serve(args: argparse.Namespace) -> int:
    if args.hash_password is not None:
        return hash_password_command(args.hash_password or None)
    cfg = config.load(args.config)
    cfg.check_syntax()  # exit 78 in one line, as the worker does
    sockets = activated_sockets()
    conf = settings(cfg, sockets)
    setup_logging(cfg)
    try:
        asyncio.run(run(conf))
    except OSError as exc:
        raise CannotListen(f"cannot listen: {exc}; free the port or change SMTPD_LISTEN") from exc
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
