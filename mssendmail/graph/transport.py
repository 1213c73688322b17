"""The Microsoft Graph transport: one message, one sendMail call.

Job: POST {GRAPH_URL}/v1.0/users/{mailbox}/sendMail with the prepared MIME
message base64-encoded as a text/plain body; 202 means Exchange accepted it.
A 401 gets exactly one fresh token and an immediate retry (the token may
have been revoked or have expired in flight). Everything else that is not
202 is classified by mssendmail.graph.classify into the delivery error classes.

Messages whose base64 form exceeds 4 MiB cannot go through sendMail; they
take ``_send_large``: a draft, attachments and upload sessions, then send
(mssendmail.graph.large; needs Mail.ReadWrite).

Timeouts: connect 10 s, and GRAPH_TIMEOUT (default 120 s) for the whole
request: connect, upload and the wait for the answer share that budget, so
a Graph that accepts the connection and never answers costs at most
GRAPH_TIMEOUT. (Each upload write may also stall at most 10 s.) One keep-alive requests.Session is
shared by all worker threads (its connection pool is thread-safe; cookies,
the one shared mutable part, are refused).

SECURITY: the Authorization header exists only inside the request; errors
are built from status, Graph error code and message, never from the
request, so a token cannot leak into a log line or a dead-letter record.

FILES: none; tokens come from mssendmail.graph.credentials.
"""

from __future__ import annotations

import base64
import http.cookiejar
import uuid
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

from mssendmail.config import Config
from mssendmail.delivery.limits import Limits
from mssendmail.errors import ConfigurationFailure
from mssendmail.graph.classify import classify_http, mark_unknown, network_error, network_unknown
from mssendmail.graph.clouds import endpoints
from mssendmail.transport import Delivered

if TYPE_CHECKING:
    from mssendmail.graph.sentitems import SentItems

# Graph refuses request bodies over 4 MB (413); the base64 body is what counts.
MAX_SENDMAIL_BODY = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
USER_AGENT = "mssendmail"


class Tokens(Protocol):
    def token(self, force_refresh: bool = False, rejected: str | None = None) -> str: ...


def base64_size(n: int) -> int:
    """Length of the base64 encoding of n bytes (no line breaks)."""
    return 4 * ((n + 2) // 3)


class GraphTransport:
    """Transport that delivers through Graph sendMail; safe for concurrent use."""

    def __init__(
        self,
        tokens: Tokens,
        graph_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pool_size: int = 8,
    ) -> None:
        self.tokens = tokens
        self.graph_url = graph_url.rstrip("/")
        self.max_requests: int | None = None  # per large-message attempt (MAX_GRAPH_REQUESTS)
        # urllib3's total budget covers connect, upload and the wait for the
        # answer (each later step gets what is left), unlike requests' tuple.
        self.timeout = Timeout(connect=min(CONNECT_TIMEOUT, timeout / 2), total=timeout)
        self.session = requests.Session()
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        # No automatic retries: a POST that may have reached Graph must not be
        # replayed behind the worker's back (that would send the mail twice).
        self.adapter = HTTPAdapter(
            pool_connections=2, pool_maxsize=max(pool_size, 1), max_retries=0
        )
        self.session.mount("https://", self.adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        # Read the environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE,
        # ~/.netrc) once: with trust_env requests re-reads it on every
        # request, a third of the worker's CPU per message in bench/drain.
        settings = self.session.merge_environment_settings(self.graph_url, {}, None, None, None)
        self.session.proxies.update(settings.get("proxies") or {})
        self.verify: bool | str = settings.get("verify") or True
        self.session.verify = self.verify
        self.session.trust_env = False

    @classmethod
    def from_config(cls, cfg: Config) -> GraphTransport:
        from mssendmail.graph.credentials import TokenProvider

        ends = endpoints(cfg)
        tokens = TokenProvider.from_config(cfg)
        concurrency = cfg.integer("CONCURRENCY")
        transport = cls(
            tokens,
            ends.graph_url,
            timeout=cfg.seconds("GRAPH_TIMEOUT") or DEFAULT_TIMEOUT,
            pool_size=max(concurrency, 1) * 2,
        )
        transport.max_requests = Limits.from_config(cfg).graph_requests
        return transport

    def __repr__(self) -> str:
        return f"GraphTransport({self.graph_url})"

    def url(self, mailbox: str) -> str:
        return f"{self.graph_url}/v1.0/users/{quote(mailbox, safe='@')}/sendMail"

    def send(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        if not mailbox or "@" not in mailbox:
            raise ConfigurationFailure(
                f"no usable mailbox to send as ({mailbox!r}); set SENDER to a mailbox address"
            )
        if base64_size(len(mime)) > MAX_SENDMAIL_BODY:
            return self._send_large(mailbox, mime, queue_id)
        body = base64.b64encode(mime)
        url = self.url(mailbox)
        token = self.tokens.token()
        response = self._post(url, body, token)
        if response.status_code == 401:
            # One fresh token, one immediate retry; a second 401 is classified.
            token = self.tokens.token(force_refresh=True, rejected=token)
            response = self._post(url, body, token)
        if response.status_code == 202:
            return Delivered(status=202, request_id=response.headers.get("request-id"))
        raise mark_unknown(
            classify_http(
                response.status_code, response.content, response.headers, mailbox=mailbox
            ),
            response.status_code,
        )

    def sent_items(self, permanent: bool = True) -> SentItems:
        """Sent Items lookups and deletes (mssendmail.graph.sentitems)."""
        from mssendmail.graph.sentitems import SentItems

        return SentItems(self, permanent)

    def _send_large(self, mailbox: str, mime: bytes, queue_id: str) -> Delivered:
        """The single branch point for the upload-session path (draft + attachments + send)."""
        from mssendmail.graph.large import send_large

        return send_large(self, mailbox, mime, queue_id)

    def _post(self, url: str, body: bytes, token: str) -> requests.Response:
        """One sendMail request, straight to the session's adapter.

        Session.request would merge settings, hooks and cookies that this
        request does not use: over a third of the worker's Python time per
        message in bench/drain. The adapter is where the session would send
        it anyway (same pool, proxies, CA bundle; no redirects followed).
        """
        request = requests.PreparedRequest()
        request.prepare(
            method="POST",
            url=url,
            data=body,
            headers={
                "User-Agent": USER_AGENT,
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/plain",
                "client-request-id": str(uuid.uuid4()),
            },
        )
        try:
            response = self.adapter.send(
                request,
                timeout=self.timeout,  # type: ignore[arg-type]  # requests passes it to urllib3
                verify=self.verify,
                proxies=self.session.proxies,
            )
            response.content  # noqa: B018  # read it all: the connection goes back to the pool
        except requests.RequestException as exc:
            error = network_error("cannot reach Graph", exc)
            error.outcome_unknown = network_unknown(exc)
            raise error from None
        return response

    def close(self) -> None:
        self.session.close()
        close = getattr(self.tokens, "close", None)
        if callable(close):
            close()
