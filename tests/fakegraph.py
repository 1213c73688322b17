"""A strict local HTTPS fake of the Microsoft identity platform and Graph sendMail.

Used by unit, end-to-end and benchmark runs; no network beyond loopback.
TLS uses a throwaway trustme CA; clients trust it through REQUESTS_CA_BUNDLE
(and CURL_CA_BUNDLE, which this machine also sets).

Endpoints (all under https://127.0.0.1:PORT):

  GET  /{tenant}/v2.0/.well-known/openid-configuration   msal discovery
  POST /{tenant}/oauth2/v2.0/token    client_credentials with client_secret
       (wrong one: 401 invalid_client) or client_assertion (a registered
       federated token, or a JWT signed by a registered certificate and
       carrying x5c); issues JWT-shaped tokens with a configurable `roles`
  GET  /metadata/identity/oauth2/token   managed identity (IMDS style;
       point msal at it with AZURE_POD_IDENTITY_AUTHORITY_HOST=URL)
  POST /v1.0/users/{mailbox}/sendMail    strict like Graph: Bearer token it
       issued, unexpired and unrevoked (401 InvalidAuthenticationToken), the
       Mail.Send role (403 ErrorAccessDenied), Content-Type text/plain,
       body over 4 MiB -> 413, valid base64 (400
       ErrorMimeContentInvalidBase64String), at least one To/Cc/Bcc
       recipient and no unqualified address (400 ErrorInvalidRecipients);
       202 with a request-id header on success
  drafts, attachments, upload sessions and draft send for messages over
       4 MiB: see tests/fakegraph_large.py (needs the Mail.ReadWrite role)
  Sent Items: every accepted message leaves a copy that appears after
       sent_items_delay; GET .../mailFolders/sentitems/messages?$filter=
       internetMessageId eq '<id>'&$select=id (Mail.ReadBasic.All), GET,
       DELETE and POST .../permanentDelete of one item (Mail.ReadWrite):
       see tests/fakegraph_sentitems.py
  GET  /_fake/state                  counters as JSON (messages, max in flight)
  POST /_fake/script                 {"graph": [fault...], "token": [fault...]}
  POST /_fake/settings               {"latency": 0.2, "roles": [...], ...}
  POST /_fake/revoke                 every issued token becomes invalid

A fault is {"kind": "error", "status": 429, "code": "...", "retry_after": "5"}
or {"kind": "reset"} (TCP RST after reading the request) or
{"kind": "hang", "seconds": 30} (read the request, then silence, then close).
Scripted faults are consumed one per request, in order, before normal rules.
"accept": true makes a fault accept the message first (Sent Items copy and
all) and then fail the response: a 504, a reset or a hang after Graph took
it. fake.plan({subject: fault}) (POST /_fake/plan) gives the first sendMail
of the message with that Subject its fault; fake.recipients_24h(mailbox)
counts what Exchange's daily recipient limit would count.

In pytest::

    with FakeGraph(tmp_path / "fake") as fake:
        fake.script(Fault.error(429, retry_after="2"))
        ...; fake.wait_for_messages(1); fake.messages[0].mime

or the ``fake_graph`` fixture below (import it into a conftest to share it).

Standalone, for subprocess end-to-end tests and bench/::

    python -m tests.fakegraph --cert-dir D [--port 0] [--out-dir O] [--no-store]
        [--latency SECONDS] [--roles Mail.Send] [--tenant T] [--client-id C]
        [--secret S] [--token-lifetime 3599]

It prints one JSON line {"url", "port", "ca", "tenant", "client_id", "secret"}
to stdout when ready (also written to D/fake.json) and serves until SIGTERM
or SIGINT. With --out-dir it appends every request to O/requests.jsonl and
every accepted message to O/messages.jsonl (mailbox, request_id, size,
sha256, recipients, message_id, subject) and, unless --no-store, writes the
decoded MIME to O/messages/<n>.eml. The standalone process keeps only
counters in memory (GET /_fake/state), so 100,000 messages cost no memory.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import trustme

from tests import fakegraph_large, fakegraph_sentitems

MAX_BODY = 4 * 1024 * 1024
_DEFAULT_CODES = {
    429: "ApplicationThrottled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Fault:
    """One scripted misbehaviour, consumed by one request."""

    kind: str  # error | reset | hang
    status: int = 500
    code: str | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = "scripted fault"
    # True: the message is accepted first (202 logic, Sent Items copy), then
    # the response fails: the "Graph delivered it anyway" case.
    accept: bool = False

    @classmethod
    def error(
        cls,
        status: int,
        code: str | None = None,
        retry_after: str | float | None = None,
        accept: bool = False,
    ) -> Fault:
        ra = None if retry_after is None else str(retry_after)
        return cls("error", status=status, code=code, retry_after=ra, accept=accept)

    @classmethod
    def reset(cls, accept: bool = False) -> Fault:
        return cls("reset", accept=accept)

    @classmethod
    def hang(cls, seconds: float, accept: bool = False) -> Fault:
        return cls("hang", seconds=seconds, accept=accept)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        fields = ("kind", "status", "code", "retry_after", "seconds", "accept")
        known = {k: doc[k] for k in fields if k in doc}
        if "retry_after" in known and known["retry_after"] is not None:
            known["retry_after"] = str(known["retry_after"])
        return cls(**known)


@dataclass
class Received:
    """A message the fake accepted (202)."""

    mailbox: str
    mime: bytes | None
    time: float
    request_id: str
    recipients: list[str]
    size: int
    sha256: str
    message_id: str | None
    subject: str | None


@dataclass
class _Parsed:
    mime: bytes
    headers: Message
    recipients: list[str]


@dataclass
class RequestRecord:
    time: float
    method: str
    path: str
    status: int  # 0 = reset or hang, no response
    mailbox: str | None = None


@dataclass
class TokenRecord:
    time: float
    kind: str  # secret | assertion | federated | certificate | managed_identity
    client_id: str
    scope: str
    status: int
    assertion: str | None = field(default=None, repr=False)


@dataclass
class IssuedToken:
    expires: float
    roles: list[str]
    client_id: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fake: FakeGraph, addr: tuple[str, int], ctx: ssl.SSLContext) -> None:
        self.fake = fake
        self.ctx = ctx
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens in the connection's own thread (in
        # finish_request), so one slow client cannot stall accept().
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(30)
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        with self.fake._lock:
            self.fake._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.fake._lock:
                self.fake._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients dropping connections is normal in fault tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60  # idle keep-alive connections are closed after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _start(self, method: str, path: str, mailbox: str | None = None) -> None:
        self._rec = RequestRecord(time.time(), method, path, 0, mailbox)
        self._token_rec: TokenRecord | None = None
        self._logged = False

    def _log(self, status: int) -> None:
        """Record the request before the client can see the answer (tests read at once)."""
        if self._logged:
            return
        self._logged = True
        fake = self.server.fake
        fake._record(replace(self._rec, status=status))
        if self._token_rec is not None:
            fake._record_token(replace(self._token_rec, status=status))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if getattr(self, "_swallow", False):
            return  # an accept-then-fail fault answers instead (see _accepted_then)
        self._log(status)
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        all_headers = {"Date": formatdate(usegmt=True), "Content-Length": str(len(body))}
        all_headers.update(headers or {})
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        # One write per response: fewer TLS records, no Nagle stalls.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if all_headers.get("Connection", "").lower() == "close":
            self.close_connection = True

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        self._reply(status, json.dumps(doc).encode(), h)

    def _graph_error(
        self, status: int, code: str, message: str, request_id: str, extra: dict[str, str]
    ) -> None:
        doc = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {"request-id": request_id, "date": formatdate(usegmt=True)},
            }
        }
        self._json(status, doc, {"request-id": request_id, **extra})

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socket.socket.close(self.connection)
        self.close_connection = True

    def _fault(self, fault: Fault, request_id: str, json_error: bool) -> int:
        fake = self.server.fake
        if fault.kind == "reset":
            self._log(0)
            self._reset()
            return 0
        if fault.kind == "hang":
            self._log(0)
            fake._stopping.wait(fault.seconds)
            self._reset()
            return 0
        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if json_error:
            code = fault.code or "temporarily_unavailable"
            self._json(fault.status, {"error": code, "error_description": fault.message}, extra)
        else:
            code = fault.code or _DEFAULT_CODES.get(fault.status, "UnknownError")
            self._graph_error(fault.status, code, fault.message, request_id, extra)
        return fault.status

    # -- routing ----------------------------------------------------------
    def do_GET(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        self._start("GET", path)
        status = 404
        if path.endswith("/v2.0/.well-known/openid-configuration") and len(parts) == 4:
            status = self._discovery(parts[0])
        elif path == "/metadata/identity/oauth2/token":
            status = self._managed_identity()
        elif path == "/_fake/state":
            status = 200
            self._json(200, fake.state())
        elif fakegraph_large.is_upload_path(path):
            return fakegraph_large.upload(self)
        elif fakegraph_sentitems.is_sentitems_get(parts) or fakegraph_sentitems.is_item_path(parts):
            status = fakegraph_sentitems.get(self, parts)
        else:
            self._json(404, {"error": "not_found"})
        self._log(status)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        is_send = len(parts) == 4 and parts[:2] == ["v1.0", "users"] and parts[3] == "sendMail"
        mailbox = unquote(parts[2]) if is_send else None
        self._start("POST", path, mailbox)
        if mailbox is not None:
            status = self._send_mail(mailbox)
        elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            status = self._token(parts[0])
        elif path.startswith("/_fake/"):
            status = self._control(path[len("/_fake/") :])
        elif fakegraph_sentitems.is_permanent_delete(parts):
            status = fakegraph_sentitems.delete(self, parts, "permanentDelete")
        elif fakegraph_large.is_large_path(parts):
            status = fakegraph_large.post(self, parts)
        else:
            self._body()
            status = 404
            self._graph_error(404, "BadRequest", "unsupported path", str(uuid.uuid4()), {})
        self._log(status)

    def do_PUT(self) -> None:
        fakegraph_large.upload(self)  # uploadUrl chunks (tests/fakegraph_large.py)

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        if fakegraph_sentitems.is_item_path(parts) and fakegraph_sentitems.is_copy(
            self.server.fake, parts
        ):
            self._start("DELETE", path)
            self._log(fakegraph_sentitems.delete(self, parts, "delete"))
            return
        fakegraph_large.delete(self)  # drafts (tests/fakegraph_large.py)

    # -- identity platform --------------------------------------------------
    def _discovery(self, tenant: str) -> int:
        fake = self.server.fake
        if tenant != fake.tenant:
            self._json(400, {"error": "invalid_tenant", "error_description": "AADSTS90002"})
            return 400
        base = f"{fake.url}/{tenant}"
        self._json(
            200,
            {
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "issuer": f"{base}/v2.0",
                "tenant_region_scope": "EU",
            },
        )
        return 200

    def _token(self, tenant: str) -> int:
        fake = self.server.fake
        form = {k: v[0] for k, v in parse_qs(self._body().decode("utf-8", "replace")).items()}
        client_id, scope = form.get("client_id", ""), form.get("scope", "")
        fault = fake._next_fault(fake._token_faults)
        if fault is not None:
            self._token_rec = TokenRecord(time.time(), "fault", client_id, scope, 0)
            return self._fault(fault, "", json_error=True)
        kind, status, error, description = self._check_client(tenant, form)
        self._token_rec = TokenRecord(
            time.time(), kind, client_id, scope, status, form.get("client_assertion")
        )
        if status == 200:
            token, lifetime = fake._issue(client_id, scope.rsplit("/", 1)[0])
            self._json(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": token,
                },
            )
        else:
            self._json(
                status,
                {
                    "error": error,
                    "error_description": description,
                    "error_codes": [int(description[6:13])] if description[6:13].isdigit() else [],
                    "correlation_id": str(uuid.uuid4()),
                },
            )
        return status

    def _check_client(self, tenant: str, form: dict[str, str]) -> tuple[str, int, str, str]:
        """(credential kind, status, error, description) for a token request."""
        fake = self.server.fake
        if tenant != fake.tenant:
            return "?", 400, "invalid_request", "AADSTS90002: Tenant not found."
        if form.get("grant_type") != "client_credentials":
            return "?", 400, "unsupported_grant_type", "AADSTS70003: unsupported grant type."
        if form.get("client_id") != fake.client_id:
            return "?", 400, "unauthorized_client", "AADSTS700016: Application not found."
        if not form.get("scope", "").endswith("/.default"):
            return "?", 400, "invalid_scope", "AADSTS1002012: scope must end in /.default."
        if "client_secret" in form:
            if fake.secret and secrets.compare_digest(form["client_secret"], fake.secret):
                return "secret", 200, "", ""
            return "secret", 401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
        assertion = form.get("client_assertion")
        if assertion and form.get("client_assertion_type") == ASSERTION_TYPE:
            if assertion in fake.federated_assertions:
                return "federated", 200, "", ""
            if self._valid_certificate_assertion(assertion, tenant):
                return "certificate", 200, "", ""
            return "assertion", 401, "invalid_client", "AADSTS700027: Client assertion failed."
        return "none", 401, "invalid_client", "AADSTS7000216: client_assertion or secret required."

    def _valid_certificate_assertion(self, assertion: str, tenant: str) -> bool:
        import jwt
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        fake = self.server.fake
        try:
            header = jwt.get_unverified_header(assertion)
            x5c = header.get("x5c")
            if not isinstance(x5c, list) or not x5c:
                return False
            cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0]))
            if cert.fingerprint(hashes.SHA256()).hex() not in fake.certificates:
                return False
            claims = jwt.decode(
                assertion,
                key=cert.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                audience=f"{fake.url}/{tenant}/oauth2/v2.0/token",
                issuer=fake.client_id,
            )
        except (jwt.PyJWTError, ValueError, binascii.Error):
            return False
        return bool(claims.get("sub") == fake.client_id)

    def _managed_identity(self) -> int:
        fake = self.server.fake
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        resource = query.get("resource", "")
        identity = query.get("client_id") or query.get("msi_res_id") or "system"
        self._token_rec = TokenRecord(time.time(), "managed_identity", identity, resource, 0)
        if self.headers.get("Metadata") != "true" or not resource:
            self._json(400, {"error": "invalid_request", "error_description": "bad request"})
            status = 400
        elif fake.managed_identities is not None and identity not in fake.managed_identities:
            self._json(400, {"error": "invalid_request", "error_description": "Identity not found"})
            status = 400
        else:
            token, lifetime = fake._issue(identity, resource)
            self._json(
                200,
                {
                    "access_token": token,
                    "expires_in": str(lifetime),
                    "expires_on": str(int(time.time()) + lifetime),
                    "resource": resource,
                    "token_type": "Bearer",
                },
            )
            status = 200
        return status

    # -- Graph ------------------------------------------------------------
    def _send_mail(self, mailbox: str) -> int:
        fake = self.server.fake
        request_id = str(uuid.uuid4())
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            self._graph_error(411, "LengthRequired", "Content-Length required", request_id, {})
            self.close_connection = True
            return 411
        if length > 64 * MAX_BODY:
            self._graph_error(413, "RequestEntityTooLarge", "too large", request_id, {})
            self.close_connection = True
            return 413
        body = self.rfile.read(length)
        fake._enter(mailbox)
        left = False
        try:
            fault = fake._next_fault(fake._graph_faults)
            if fake.latency:
                fake._stopping.wait(fake.latency)
            if fault is not None and not fault.accept:
                return self._fault(fault, request_id, json_error=False)
            status, code, message, parsed = fake._check_send(mailbox, self.headers, body)
            # Out of flight before the reply is written: once the client has
            # it, it may send its next request, which must not count as a 5th.
            left = True
            fake._leave(mailbox)
            if status != 202 or parsed is None:
                extra = {"WWW-Authenticate": 'Bearer realm=""'} if status == 401 else {}
                self._graph_error(status, code, message, request_id, extra)
                return status
            fault = fault or fake._planned(parsed.headers.get("Subject"))
            if fault is not None and not fault.accept:
                return self._fault(fault, request_id, json_error=False)
            fake._accept(mailbox, parsed, request_id)
            if fault is not None:
                return self._fault(fault, request_id, json_error=False)
            self._reply(
                202,
                b"",
                {
                    "request-id": request_id,
                    "client-request-id": self.headers.get("client-request-id") or request_id,
                },
            )
            return 202
        finally:
            if not left:
                fake._leave(mailbox)

    # -- control ----------------------------------------------------------
    def _control(self, what: str) -> int:
        fake = self.server.fake
        try:
            doc = json.loads(self._body() or b"{}")
        except ValueError:
            self._json(400, {"error": "bad json"})
            return 400
        if what == "script":
            fake.script(*(Fault.from_json(f) for f in doc.get("graph", [])))
            fake.script_token(*(Fault.from_json(f) for f in doc.get("token", [])))
        elif what == "settings":
            for key in ("latency", "roles", "token_lifetime", "sent_items_delay"):
                if key in doc:
                    setattr(fake, key, doc[key])
        elif what == "plan":
            fake.plan({str(k): Fault.from_json(v) for k, v in doc.items()})
        elif what == "revoke":
            fake.revoke_tokens()
        else:
            self._json(404, {"error": "unknown control"})
            return 404
        self._json(200, fake.state())
        return 200


class FakeGraph:
    """The fake server; start() / stop(), or use it as a context manager."""

    def __init__(
        self,
        cert_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tenant: str = "fake-tenant",
        client_id: str = "fake-client-id",
        secret: str = "fake-client-secret",
        roles: list[str] | None = None,
        token_lifetime: int = 3599,
        latency: float = 0.0,
        out_dir: str | os.PathLike[str] | None = None,
        keep_bodies: bool = True,
        store_files: bool = True,
        keep_records: bool = True,
    ) -> None:
        self.cert_dir = Path(cert_dir)
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.tenant, self.client_id, self.secret = tenant, client_id, secret
        self.roles = ["Mail.Send"] if roles is None else list(roles)
        self.token_lifetime = token_lifetime
        self.latency = latency
        self.keep_bodies = keep_bodies
        self.keep_records = keep_records  # False: counters and JSONL only (100k-message runs)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.store_files = store_files
        # Policy knobs tests may set directly.
        self.mailboxes: set[str] | None = None  # None: any mailbox exists
        self.send_as_denied: set[str] = set()
        self.federated_assertions: set[str] = set()
        self.certificates: set[str] = set()  # sha256 hex of allowed client certificates
        self.managed_identities: set[str] | None = None  # None: any identity
        # Sent Items (tests/fakegraph_sentitems.py): copies appear this long after the accept.
        self.sent_items_delay = 0.0
        self._sent_items: dict[str, dict[str, fakegraph_sentitems.SentCopy]] = {}
        self.deletions: list[fakegraph_sentitems.Deletion] = []
        self.lookups = 0
        self._lookup_faults: deque[Fault] = deque()
        self._fault_plan: dict[str, Fault] = {}
        self._recipients: dict[str, deque[tuple[float, int]]] = {}
        # What happened.
        self.messages: list[Received] = []
        self.requests: list[RequestRecord] = []
        self.token_requests: list[TokenRecord] = []
        self.accepted = 0  # counters stay exact even when records are not kept
        self.request_count = 0
        self.max_in_flight = 0
        self.max_in_flight_per_mailbox: dict[str, int] = {}
        self._in_flight = 0
        self._in_flight_mailbox: dict[str, int] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._graph_faults: deque[Fault] = deque()
        self._token_faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: set[Any] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._jsonl: dict[str, Any] = {}
        self.ca_path = str(self.cert_dir / "ca.pem")

    # -- lifecycle --------------------------------------------------------
    def start(self) -> FakeGraph:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        self._server = _Server(self, (self.host, self.port), ctx)
        self.port = self._server.server_address[1]
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "messages").mkdir(exist_ok=True)
            for name in ("requests", "messages"):
                self._jsonl[name] = open(self.out_dir / f"{name}.jsonl", "a", buffering=1)  # noqa: SIM115
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._server = None
        for fh in self._jsonl.values():
            fh.close()
        self._jsonl.clear()

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need --------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment that makes requests (and so msal) trust the fake."""
        return {"REQUESTS_CA_BUNDLE": self.ca_path, "CURL_CA_BUNDLE": self.ca_path}

    def config(self) -> dict[str, str]:
        """mssendmail config keys for a client-secret setup against this fake."""
        return {
            "TENANT_ID": self.tenant,
            "CLIENT_ID": self.client_id,
            "CLIENT_SECRET": self.secret,
            "AUTHORITY_HOST": self.url,
            "GRAPH_URL": self.url,
        }

    def config_text(self) -> str:
        return "".join(f"{k}={v}\n" for k, v in self.config().items())

    # -- fault injection and knobs ------------------------------------------
    def script(self, *faults: Fault) -> None:
        """Faults for the next sendMail requests, one each, in order."""
        with self._lock:
            self._graph_faults.extend(faults)

    def script_lookup(self, *faults: Fault) -> None:
        """Faults for the next Sent Items / item GETs and deletes, one each."""
        with self._lock:
            self._lookup_faults.extend(faults)

    def plan(self, faults: dict[str, Fault]) -> None:
        """A fault for the first sendMail of the message with each Subject (then normal)."""
        with self._lock:
            self._fault_plan.update(faults)

    def _planned(self, subject: str | None) -> Fault | None:
        with self._lock:
            return self._fault_plan.pop(str(subject), None) if self._fault_plan else None

    def sent_items_view(self, mailbox: str, folder: str = "sentitems") -> list[Any]:
        """The Sent Items (or Deleted Items) copies visible now."""
        return fakegraph_sentitems.view(self, mailbox, folder)

    def recipients_24h(self, mailbox: str, now: float | None = None) -> int:
        """Recipients accepted for a mailbox in the last 24 hours (Exchange's daily limit)."""
        now = time.time() if now is None else now
        with self._lock:
            log = self._recipients.get(mailbox.lower(), deque())
            return sum(n for when, n in log if when > now - 86400)

    def script_token(self, *faults: Fault) -> None:
        """Faults for the next token requests (OAuth2 JSON error bodies)."""
        with self._lock:
            self._token_faults.extend(faults)

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def register_certificate(self, cert_pem: bytes) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificate(cert_pem)
        self.certificates.add(cert.fingerprint(hashes.SHA256()).hex())

    # -- observation --------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "messages": self.accepted,
                "requests": self.request_count,
                "token_requests": len(self.token_requests),
                "max_in_flight": self.max_in_flight,
                "max_in_flight_per_mailbox": dict(self.max_in_flight_per_mailbox),
                "pending_faults": len(self._graph_faults),
                "lookups": self.lookups,
                "deletions": len(self.deletions),
                "recipients_24h": {
                    mb: sum(n for when, n in log if when > time.time() - 86400)
                    for mb, log in self._recipients.items()
                },
                "pending_token_faults": len(self._token_faults),
            }

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least count messages were accepted; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.accepted < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake got {self.accepted} of {count} messages")
                self._changed.wait(left)
            return list(self.messages)

    def statuses(self, path_part: str = "/sendMail") -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if path_part in r.path]

    # -- internals used by the handler ----------------------------------------
    def _next_fault(self, queue: deque[Fault]) -> Fault | None:
        with self._lock:
            return queue.popleft() if queue else None

    def _issue(self, client_id: str, resource: str) -> tuple[str, int]:
        now = int(time.time())
        lifetime = int(self.token_lifetime)
        roles = list(self.roles)

        def b64(doc: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

        payload = {
            "aud": resource,
            "iss": f"{self.url}/{self.tenant}/",
            "tid": self.tenant,
            "appid": client_id,
            "idtyp": "app",
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "uti": secrets.token_urlsafe(8),
        }
        token = ".".join(
            [
                b64({"typ": "JWT", "alg": "RS256", "kid": "fake"}),
                b64(payload),
                secrets.token_urlsafe(32),
            ]
        )
        with self._lock:
            self._tokens[token] = IssuedToken(now + lifetime, roles, client_id)
        return token, lifetime

    def _check_send(
        self, mailbox: str, headers: Any, body: bytes
    ) -> tuple[int, str, str, _Parsed | None]:
        # Size is checked at the front door, before authentication.
        if len(body) > MAX_BODY:
            return (
                413,
                "RequestEntityTooLarge",
                "The maximum request length supported is 4MB.",
                None,
            )
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        with self._lock:
            issued = self._tokens.get(token) if scheme == "Bearer" else None
        if issued is None or issued.expires <= time.time():
            return (
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
                None,
            )
        if "Mail.Send" not in issued.roles:
            return 403, "ErrorAccessDenied", "Access is denied. Check credentials.", None
        if self.mailboxes is not None and mailbox.lower() not in self.mailboxes:
            return 404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.", None
        if mailbox.lower() in self.send_as_denied:
            return 403, "ErrorSendAsDenied", "The user cannot send as this mailbox.", None
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "text/plain":
            return 415, "UnsupportedMediaType", f"Content-Type {ctype!r} is not supported.", None
        try:
            # .NET's decoder ignores whitespace; anything else must be base64.
            mime = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            mime = b""
        if not mime:
            return (
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
                None,
            )
        msg = BytesHeaderParser(policy=compat32).parsebytes(mime)
        fields = [str(v) for h in ("to", "cc", "bcc") for v in (msg.get_all(h) or [])]
        addresses = fakegraph_large.recipients(fields)
        if not addresses:
            return 400, "ErrorInvalidRecipients", "At least one recipient is not valid.", None
        for addr in addresses:
            local, at, domain = addr.rpartition("@")
            if not (local and at and domain and "." in domain):
                return 400, "ErrorInvalidRecipients", f"Recipient '{addr}' is not valid.", None
        return 202, "", "", _Parsed(mime, msg, addresses)

    def _accept(self, mailbox: str, parsed: _Parsed, request_id: str) -> None:
        mime, msg = parsed.mime, parsed.headers
        received = Received(
            mailbox=mailbox,
            mime=mime if self.keep_bodies else None,
            time=time.time(),
            request_id=request_id,
            recipients=parsed.recipients,
            size=len(mime),
            sha256=hashlib.sha256(mime).hexdigest(),
            message_id=msg.get("Message-ID"),
            subject=msg.get("Subject"),
        )
        fakegraph_sentitems.add_copy(self, mailbox, received.message_id, received.subject)
        with self._changed:
            log = self._recipients.setdefault(mailbox.lower(), deque())
            log.append((received.time, len(parsed.recipients)))
            while log and log[0][0] <= received.time - 86400:
                log.popleft()
            self.accepted += 1
            number = self.accepted
            if self.keep_records:
                self.messages.append(received)
            self._changed.notify_all()
        if self.out_dir is not None:
            if self.store_files:
                (self.out_dir / "messages" / f"{number:07d}.eml").write_bytes(mime)
            doc = {k: v for k, v in asdict(received).items() if k != "mime"}
            self._write_jsonl("messages", {"n": number, **doc})

    def _enter(self, mailbox: str) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            n = self._in_flight_mailbox.get(mailbox, 0) + 1
            self._in_flight_mailbox[mailbox] = n
            if n > self.max_in_flight_per_mailbox.get(mailbox, 0):
                self.max_in_flight_per_mailbox[mailbox] = n

    def _leave(self, mailbox: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self._in_flight_mailbox[mailbox] -= 1

    def _record(self, record: RequestRecord) -> None:
        with self._changed:
            self.request_count += 1
            if self.keep_records:
                self.requests.append(record)
            self._changed.notify_all()
        if self.out_dir is not None:
            self._write_jsonl("requests", asdict(record))

    def _record_token(self, record: TokenRecord) -> None:
        with self._lock:
            self.token_requests.append(record)

    def _write_jsonl(self, name: str, doc: dict[str, Any]) -> None:
        line = json.dumps(doc) + "\n"
        with self._lock:
            fh = self._jsonl.get(name)
            if fh is not None:
                fh.write(line)


@contextlib.contextmanager
def running(
    directory: str | os.PathLike[str], monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> Iterator[FakeGraph]:
    """A started fake whose CA the process trusts for the duration."""
    fake = FakeGraph(directory, **kwargs).start()
    try:
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    """A running fake; REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE point at its CA."""
    with running(tmp_path / "fakegraph", monkeypatch) as fake:
        yield fake


def spawn(work: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the standalone fake as a child process (for bench/); (process, its info line).

    It keeps certificates in work/fake and its JSONL logs in work/fake-out,
    and stores no message bodies.
    """
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakegraph",
            "--cert-dir",
            str(work / "fake"),
            "--out-dir",
            str(work / "fake-out"),
            "--no-store",
            *args,
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info: dict[str, str] = json.loads(proc.stdout.readline())
    return proc, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakegraph", description=__doc__)
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out-dir")
    parser.add_argument("--no-store", action="store_true", help="do not write .eml files")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--roles", default="Mail.Send")
    parser.add_argument("--tenant", default="fake-tenant")
    parser.add_argument("--client-id", default="fake-client-id")
    parser.add_argument("--secret", default="fake-client-secret")
    parser.add_argument("--token-lifetime", type=int, default=3599)
    parser.add_argument("--sent-items-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = FakeGraph(
        args.cert_dir,
        host=args.host,
        port=args.port,
        tenant=args.tenant,
        client_id=args.client_id,
        secret=args.secret,
        roles=[r for r in args.roles.split(",") if r],
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        out_dir=args.out_dir,
        # A 100k-message bench must not hold every message in memory; the
        # JSONL files and /_fake/state are how another process checks.
        keep_bodies=False,
        keep_records=False,
        store_files=not args.no_store,
    )
    fake.sent_items_delay = args.sent_items_delay
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fake.start()
    info = {
        "url": fake.url,
        "port": fake.port,
        "ca": fake.ca_path,
        "tenant": fake.tenant,
        "client_id": fake.client_id,
        "secret": fake.secret,
    }
    (Path(args.cert_dir) / "fake.json").write_text(json.dumps(info))
    print(json.dumps(info), flush=True)
    while not stop.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
