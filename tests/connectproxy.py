"""A tiny threaded HTTP CONNECT proxy on loopback, for the proxy tests.

It accepts only CONNECT to 127.0.0.1 or localhost (it must never become an
open relay to the Internet, even on a shared test machine), records each
target, and pipes bytes both ways until either side closes.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from types import TracebackType

ALLOWED_HOSTS = ("127.0.0.1", "localhost")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(4096).decode("latin-1").split()
        while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
            pass  # the rest of the request head
        if len(line) != 3 or line[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 only CONNECT\r\n\r\n")
            return
        host, _, port = line[1].rpartition(":")
        if host not in ALLOWED_HOSTS or not port.isdigit():
            self.wfile.write(b"HTTP/1.1 403 loopback only\r\n\r\n")
            return
        with self.server.lock:
            self.server.targets.append(line[1])
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            self.wfile.write(b"HTTP/1.1 502 cannot connect\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        self._pipe(self.connection, upstream)

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        with upstream:
            pending = self.rfile.peek(0) if hasattr(self.rfile, "peek") else b""
            if pending:
                upstream.sendall(self.rfile.read(len(pending)))
            sockets = [client, upstream]
            while True:
                ready, _, _ = select.select(sockets, [], [], 30)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.targets: list[str] = []
        self.lock = threading.Lock()


class ConnectProxy:
    """`with ConnectProxy() as proxy:` ... proxy.url, proxy.targets."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def targets(self) -> list[str]:
        with self._server.lock:
            return list(self._server.targets)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
