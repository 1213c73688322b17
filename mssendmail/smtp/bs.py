"""``mssendmail -bs``: an SMTP session on the process's stdin and stdout.

NAME
    mssendmail -bs -- SMTP submission over standard input and output

SYNOPSIS
    mssendmail -bs [-i]

DESCRIPTION
    Symfony Mailer's default transport (and so Laravel and Nextcloud) starts
    ``sendmail -bs`` and speaks SMTP to its stdin/stdout: HELO, then one or
    more MAIL/RCPT/DATA rounds, then QUIT. Each message is queued exactly as
    a normal submission (mssendmail.smtp.protocol), and its 250 reply comes only once
    it is on disk.

    aiosmtpd wants one duplex transport. Two threads copy stdin into one end
    of a socketpair and the other end's output to stdout; the server runs on
    the other end. That is one code path for pipes, terminals, sockets and
    plain files (asyncio's pipe transports refuse regular files, so
    ``mssendmail -bs < session.txt`` would otherwise fail).

READS/WRITES
    stdin (SMTP commands), stdout (SMTP replies), QUEUE_DIR/maildrop.
    Nothing is written to stderr unless the configuration is unusable:
    Symfony treats early stderr output as "could not start".

SECURITY
    Runs as the calling user, like plain ``mssendmail``: the record carries
    the caller's uid and the worker applies its sender policy to it.

EXIT STATUS
    0 after QUIT or end of input (failed messages were answered with 4xx/5xx
    replies on stdout); 75 (EX_TEMPFAIL) when SIGTERM, SIGINT or SIGHUP ended
    the session (one line on stderr); 78 (EX_CONFIG) if the configuration is
    unusable.

FILES
    /etc/mssendmail/.env (QUEUE_DIR, MAX_MESSAGE_SIZE)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading

from mssendmail.config import Config
from mssendmail.errors import EX_OK, EX_TEMPFAIL, MssendmailError
from mssendmail.smtp.protocol import QueueHandler, Server, local_hostname
from mssendmail.spool.layout import Spool

CHUNK = 64 * 1024
# After QUIT, how long we wait for a client that does not read its 221.
FLUSH_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main_bs(cfg: Config, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Serve one SMTP session on stdin/stdout; the -bs branch of ``mssendmail``."""
    # aiosmtpd logs warnings (unknown commands, ...) through logging's
    # last-resort handler to stderr; -bs must keep stderr quiet.
    logging.disable(logging.CRITICAL)
    try:
        handler = QueueHandler(Spool(cfg.queue_dir), cfg.max_message_size, "bs", local_hostname())
    except MssendmailError as exc:
        # The client waits for a greeting: tell it why there is none, too.
        _write_all(stdout_fd, f"421 4.3.0 mssendmail: {exc}\r\n".encode(errors="replace"))
        raise  # sendmail's main() reports it on stderr, with its exit code
    # A vanished client is an EPIPE for the output thread, which ends the session.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signum = asyncio.run(serve(handler, stdin_fd, stdout_fd))
    if signum is not None:
        name = signal.Signals(signum).name
        print(
            f"mssendmail: -bs session ended by {name}; messages not yet answered "
            "with 250 were not queued, send them again",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    return EX_OK


async def serve(handler: QueueHandler, stdin_fd: int, stdout_fd: int) -> int | None:
    """Run the SMTP session until QUIT, end of input, the idle timeout or a signal.

    Returns the number of the signal that ended it, if one did.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    finished = loop.create_future()
    stopped_by: list[int] = []

    def closed() -> None:
        if not finished.done():
            finished.set_result(None)

    server = Server(handler, client_label=f"uid {os.getuid()}", on_close=closed, loop=loop)

    def on_signal(signum: int) -> None:
        stopped_by.append(signum)
        if isinstance(server.transport, asyncio.WriteTransport):
            server.transport.abort()  # a message being written still finishes or is removed
        closed()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    reader = threading.Thread(target=_pump_in, args=(stdin_fd, theirs), daemon=True)
    writer = threading.Thread(target=_pump_out, args=(theirs, stdout_fd), daemon=True)
    reader.start()
    writer.start()
    await loop.create_connection(lambda: server, sock=ours)
    await finished
    # Our end is closed, so the writer sees EOF once every reply is on stdout.
    if not stopped_by:
        await asyncio.to_thread(writer.join, FLUSH_TIMEOUT)
    theirs.close()
    return stopped_by[0] if stopped_by else None


def _pump_in(fd: int, sock: socket.socket) -> None:
    """stdin -> socket; end of input becomes a half-close the server sees as EOF."""
    try:
        while data := os.read(fd, CHUNK):
            sock.sendall(data)
    except OSError:
        pass  # stdin or the session went away: both end the session
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already closed by the server


def _pump_out(sock: socket.socket, fd: int) -> None:
    """socket -> stdout until the server closes; a vanished reader ends the session."""
    try:
        while data := sock.recv(CHUNK):
            _write_all(fd, data)
    except OSError:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # nobody hears the replies: stop serving
        except OSError:
            pass  # already closed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    from mssendmail.config import load

    sys.exit(main_bs(load()))
