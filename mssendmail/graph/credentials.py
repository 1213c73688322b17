"""Graph access tokens from exactly one configured credential, cached on disk.

Job: validate which credential the config names, build the msal client for
it, and hand out access tokens for Graph. Exactly one of these must be set:

  CLIENT_SECRET          with TENANT_ID and CLIENT_ID
  CLIENT_CERTIFICATE     PEM file with private key and certificate (chain),
                         optional CLIENT_CERTIFICATE_PASSWORD; with TENANT_ID
                         and CLIENT_ID; sends x5c so Subject Name/Issuer
                         auth works
  FEDERATED_TOKEN_FILE   workload identity federation; the file is re-read
                         for every token request (kubelet rotates it); with
                         TENANT_ID and CLIENT_ID
  MANAGED_IDENTITY       ``system``, a user-assigned client id, or a
                         user-assigned resource id (/subscriptions/...)

None or several is a ConfigError (exit 78) naming the keys.

Reads/writes: the config; QUEUE_DIR/state/msal-token-cache.json and
msal-http-cache.json (mode 0600, written atomically) under an flock on
msal.lock, so a ``--once`` run every minute reuses the token of the run
before and two workers never clobber each other's cache. If the state
directory is not usable the caches live in memory only (logged once).

SECURITY: the secret, the key and the tokens never appear in exceptions,
log lines or reprs. The token cache holds access tokens (not the secret);
it is 0600 and owned by the worker. The caches are JSON, never pickle:
the state directory is group-writable, and a planted pickle would run code.

EXIT STATUS: ConfigError (78) from ``from_config`` for an unusable config;
``token()`` raises ConfigurationFailure (credentials refused) or
TemporaryFailure (identity platform unreachable or busy).

FILES: /etc/mssendmail/.env, QUEUE_DIR/state/msal-*.json, QUEUE_DIR/state/msal.lock
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from mssendmail.config import Config
from mssendmail.errors import (
    ConfigError,
    ConfigurationFailure,
    DeliveryError,
    TemporaryFailure,
)
from mssendmail.graph import msal_compat
from mssendmail.graph.classify import classify_token_error, network_error, one_line
from mssendmail.graph.clouds import Endpoints, endpoints
from mssendmail.graph.network import Network, from_environment, settings
from mssendmail.logs import kv
from mssendmail.spool import layout as spool
from mssendmail.spool.layout import CREDENTIAL_FILE, HTTP_CACHE_FILE, TOKEN_CACHE_FILE
from mssendmail.spool.layout import MSAL_LOCK_FILE as LOCK_FILE

log = logging.getLogger("mssendmail.graph.credentials")

CREDENTIAL_KEYS = (
    "CLIENT_SECRET",
    "CLIENT_CERTIFICATE",
    "FEDERATED_TOKEN_FILE",
    "MANAGED_IDENTITY",
)
STATE_MAX_BYTES = 1024 * 1024
# msal itself treats a token with under 5 minutes left as expired.
EXPIRY_MARGIN = 300.0
TOKEN_TIMEOUT = (10.0, 30.0)
LOCK_TIMEOUT = 30.0

_TENANT_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
_GUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_CLIENT_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}\Z")


@dataclass(frozen=True)
class CredentialSpec:
    """A validated credential choice; repr never shows the secret or key."""

    kind: str  # secret | certificate | federated | managed_identity
    tenant: str = ""
    client_id: str = ""
    secret: str = field(default="", repr=False)
    private_key_pem: str = field(default="", repr=False)
    certificate_pem: str = ""
    passphrase: str = field(default="", repr=False)
    token_file: str = ""
    identity: str = ""  # system | client id | resource id


def select(cfg: Config) -> CredentialSpec:
    """Which credential the config names; ConfigError when none, several or incomplete."""
    chosen = [key for key in CREDENTIAL_KEYS if cfg.get(key)]
    if not chosen:
        raise ConfigError(
            "no Graph credential is configured; set exactly one of "
            f"{', '.join(CREDENTIAL_KEYS)} (the first three with TENANT_ID and CLIENT_ID)"
        )
    if len(chosen) > 1:
        raise ConfigError(
            f"several Graph credentials are configured ({', '.join(chosen)}); keep exactly one"
        )
    if cfg.get("CLIENT_CERTIFICATE_PASSWORD") and chosen[0] != "CLIENT_CERTIFICATE":
        raise ConfigError(
            "CLIENT_CERTIFICATE_PASSWORD is set without CLIENT_CERTIFICATE; remove it"
        )
    key = chosen[0]
    if key == "MANAGED_IDENTITY":
        identity = cfg.get(key)
        if not (
            identity.lower() == "system" or _GUID_RE.match(identity) or _is_resource_id(identity)
        ):
            raise ConfigError(
                f"MANAGED_IDENTITY={identity!r} must be 'system', the client id (a GUID) of a "
                "user-assigned identity, or its resource id (/subscriptions/...)"
            )
        return CredentialSpec(kind="managed_identity", identity=identity)
    tenant, client_id = _tenant_and_client(cfg, key)
    if key == "CLIENT_SECRET":
        return CredentialSpec(
            kind="secret", tenant=tenant, client_id=client_id, secret=cfg.get(key)
        )
    if key == "CLIENT_CERTIFICATE":
        private_key, certs = load_certificate(cfg.get(key), cfg.get("CLIENT_CERTIFICATE_PASSWORD"))
        return CredentialSpec(
            kind="certificate",
            tenant=tenant,
            client_id=client_id,
            private_key_pem=private_key,
            certificate_pem=certs,
            passphrase=cfg.get("CLIENT_CERTIFICATE_PASSWORD"),
        )
    path = cfg.get(key)
    try:
        read_token_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read FEDERATED_TOKEN_FILE {path}: {exc.strerror}") from None
    return CredentialSpec(kind="federated", tenant=tenant, client_id=client_id, token_file=path)


def _is_resource_id(value: str) -> bool:
    return value.lower().startswith("/subscriptions/") and "/providers/" in value.lower()


def _tenant_and_client(cfg: Config, key: str) -> tuple[str, str]:
    missing = [k for k in ("TENANT_ID", "CLIENT_ID") if not cfg.get(k)]
    if missing:
        raise ConfigError(f"{key} needs {' and '.join(missing)}; set it in the config")
    tenant, client_id = cfg.get("TENANT_ID"), cfg.get("CLIENT_ID")
    if not _TENANT_RE.match(tenant):
        raise ConfigError(f"TENANT_ID={tenant!r} is not a tenant id or domain")
    if not _CLIENT_ID_RE.match(client_id):
        raise ConfigError(f"CLIENT_ID={client_id!r} is not an application (client) id")
    return tenant, client_id


def load_certificate(path: str, password: str) -> tuple[str, str]:
    """(private key PEM, certificate PEMs with the key's own certificate first) from one file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    try:
        with open(path, "rb") as fh:
            data = fh.read(STATE_MAX_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read CLIENT_CERTIFICATE {path}: {exc.strerror}") from None
    text = data.decode("ascii", "replace")
    keys = re.findall(
        r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?-----END (?:RSA |EC |ENCRYPTED )?"
        r"PRIVATE KEY-----",
        text,
        re.S,
    )
    cert_blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if len(keys) != 1 or not cert_blocks:
        raise ConfigError(
            f"CLIENT_CERTIFICATE {path} must be a PEM file with one private key and its "
            "certificate (from a .pfx: openssl pkcs12 -in app.pfx -out app.pem -nodes)"
        )
    try:
        key = load_pem_private_key(keys[0].encode(), password.encode() if password else None)
    except TypeError:
        raise ConfigError(
            f"the private key in {path} is encrypted; set CLIENT_CERTIFICATE_PASSWORD"
        ) from None
    except ValueError:
        raise ConfigError(
            f"cannot load the private key in {path}; check CLIENT_CERTIFICATE_PASSWORD"
        ) from None
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    own: list[str] = []
    chain: list[str] = []
    for block in cert_blocks:
        try:
            cert = x509.load_pem_x509_certificate(block.encode())
        except ValueError:
            raise ConfigError(f"a certificate in {path} cannot be parsed") from None
        matches = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        (own if matches == spki else chain).append(block)
    if not own:
        raise ConfigError(f"no certificate in {path} matches its private key")
    # msal takes the thumbprint from the first certificate and sends all as x5c.
    return keys[0], "\n".join(own[:1] + chain)


def read_token_file(path: str) -> str:
    """The federated assertion: the file's whole content, re-read on every call."""
    with open(path, encoding="ascii", errors="replace") as fh:
        token = fh.read(STATE_MAX_BYTES).strip()
    if not token:
        raise OSError(0, "the file is empty", path)
    return token


def token_claims(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT access token, or {} when it is opaque."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error):
        return {}
    return payload if isinstance(payload, dict) else {}


class _TimeoutSession(requests.Session):
    """requests has no session-wide timeout; msal's managed identity calls pass none.

    It also applies HTTPS_PROXY/NO_PROXY/CA_BUNDLE (graph/network.py) to every
    request msal makes, per URL (discovery and token endpoints may differ).
    """

    def __init__(self, network: Network | None = None) -> None:
        super().__init__()
        self.network = network or from_environment()
        self.verify = self.network.verify
        self.trust_env = False  # the environment was read once, into network

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = TOKEN_TIMEOUT
        if kwargs.get("proxies") is None:
            text = url.decode() if isinstance(url, bytes) else url
            kwargs["proxies"] = self.network.proxies_for(text)
        return super().request(method, url, *args, **kwargs)


class _StateStore:
    """The msal caches on disk: JSON, 0600, atomic writes, one flock for both files."""

    def __init__(self, directory: str | None, fingerprint: str = "") -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.lock: Any = None
        self._warned = False
        self._last_http: bytes = b""
        if directory:
            from filelock import FileLock

            self.lock = FileLock(
                os.path.join(directory, LOCK_FILE), timeout=LOCK_TIMEOUT, mode=0o660
            )

    def usable(self) -> bool:
        return self.directory is not None and os.path.isdir(self.directory)

    def warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            log.warning(
                kv(
                    event="token-cache-unusable",
                    dir=self.directory,
                    during=what,
                    error=reason,
                    effect="tokens cached in memory only",
                )
            )

    def _read(self, name: str) -> str | None:
        assert self.directory is not None
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # absent, a planted symlink (ELOOP) or unreadable: start afresh
            return None
        try:
            st = os.fstat(fd)
            # Only our own regular file counts; anything else was planted.
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return None
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(STATE_MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > STATE_MAX_BYTES:
            return None
        return data.decode("utf-8", "replace")

    def load(self, token_cache: Any, http_cache: dict[str, Any]) -> None:
        """Replace both in-memory caches with the disk copy (another worker may have refreshed)."""
        self._drop_if_other_credential()
        text = self._read(TOKEN_CACHE_FILE)
        if text:
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            # msal trusts the shape of what it deserializes; a damaged file
            # must not crash every later token request.
            if isinstance(doc, dict) and all(isinstance(v, dict) for v in doc.values()):
                token_cache.deserialize(text)
            else:
                log.warning(kv(event="token-cache-damaged", dir=self.directory, effect="ignored"))
        text = self._read(HTTP_CACHE_FILE)
        if text:
            self._last_http = text.encode()
            http_cache.clear()
            http_cache.update(_http_cache_from_json(text))

    def _drop_if_other_credential(self) -> None:
        """Forget tokens that other credential settings fetched (a changed secret or
        certificate): the next token must come from the identity platform and so
        prove the new credential, not ride on a cached token for up to an hour."""
        if not self.fingerprint:
            return
        assert self.directory is not None
        previous = (self._read(CREDENTIAL_FILE) or "").strip()
        if previous == self.fingerprint:
            return
        cache = os.path.join(self.directory, TOKEN_CACHE_FILE)
        had_tokens = os.path.lexists(cache)
        spool.unlink_quiet(cache)
        path = os.path.join(self.directory, CREDENTIAL_FILE)
        spool.write_atomic(path, self.fingerprint.encode() + b"\n", 0o600)
        if previous or had_tokens:  # a first run has nothing to drop: no news for the log
            log.info(kv(event="token-cache-dropped", reason="credential settings changed"))

    def save(self, token_cache: Any, http_cache: dict[str, Any]) -> None:
        assert self.directory is not None
        if token_cache.has_state_changed:
            data = token_cache.serialize().encode()
            spool.write_atomic(os.path.join(self.directory, TOKEN_CACHE_FILE), data, 0o600)
        http = _http_cache_to_json(http_cache).encode()
        if http != self._last_http:
            spool.write_atomic(os.path.join(self.directory, HTTP_CACHE_FILE), http, 0o600)
            self._last_http = http


# msal's http_cache holds its index and NormalizedResponse objects (public
# discovery documents and cached error replies, never tokens or secrets).
def _http_cache_to_json(cache: Mapping[str, Any]) -> str:
    out: dict[str, Any] = {}
    for key, value in cache.items():
        if hasattr(value, "status_code") and hasattr(value, "text"):
            out[key] = {
                "__response__": {
                    "status_code": value.status_code,
                    "text": value.text,
                    "headers": dict(getattr(value, "headers", {}) or {}),
                }
            }
        else:
            out[key] = value
    return json.dumps(out, sort_keys=True)


def _http_cache_from_json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and "__response__" in value:
            raw = value["__response__"]
            try:
                out[key] = msal_compat.normalized_response(
                    int(raw["status_code"]), str(raw["text"]), dict(raw["headers"])
                )
            except (KeyError, TypeError, ValueError):
                continue
        elif key == msal_compat.HTTP_CACHE_INDEX:
            index = _valid_index(value)
            if index is not None:
                out[key] = index
    return out if msal_compat.HTTP_CACHE_INDEX in out else {}


def _valid_index(value: Any) -> tuple[list[list[Any]], dict[str, list[int]]] | None:
    """msal's expiry index: ([[expires, created, key]...], {key: [expires, created]})."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    sequence, timestamps = value
    if not (isinstance(sequence, list) and isinstance(timestamps, dict)):
        return None
    ok = all(
        isinstance(e, list)
        and len(e) == 3
        and isinstance(e[0], int)
        and isinstance(e[1], int)
        and isinstance(e[2], str)
        for e in sequence
    )
    ok = ok and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
        for v in timestamps.values()
    )
    return (sequence, timestamps) if ok else None


class TokenProvider:
    """Hands out Graph access tokens; safe to call from many threads.

    The fast path returns the remembered token until msal would consider it
    stale; only then is msal (and the disk cache, under its lock) consulted.
    """

    def __init__(
        self,
        spec: CredentialSpec,
        ends: Endpoints,
        state_dir: str | None = None,
        *,
        app_factory: Callable[[CredentialSpec, Endpoints, Any, dict[str, Any]], Any] | None = None,
        fingerprint: str = "",
        network: Network | None = None,
    ) -> None:
        import msal

        self.spec = spec
        self.endpoints = ends
        self._app_factory = app_factory or functools.partial(build_app, network=network)
        self._lock = threading.Lock()
        self._app: Any = None
        self._cache = msal.SerializableTokenCache()
        self._http_cache: dict[str, Any] = {}
        self._store = _StateStore(state_dir, fingerprint)
        self._current: tuple[str, float] | None = None  # (token, reuse until)
        self.fetches = 0  # tokens obtained from the identity platform (for tests and logs)

    @classmethod
    def from_config(cls, cfg: Config) -> TokenProvider:
        """Validate the credential now (ConfigError); talk to the network only on first use."""
        from mssendmail.graph import fingerprint

        spec = select(cfg)
        state = spool.Spool(cfg.queue_dir).dir(spool.STATE)
        return cls(
            spec,
            endpoints(cfg),
            state,
            fingerprint=fingerprint.of(cfg),
            network=settings(cfg),
        )

    def __repr__(self) -> str:
        return f"TokenProvider(kind={self.spec.kind}, authority={self.endpoints.authority_host})"

    def token(self, force_refresh: bool = False, rejected: str | None = None) -> str:
        """A usable access token. With force_refresh, a new one unless another thread
        already replaced ``rejected`` (the token Graph refused)."""
        current = self._current
        if current is not None and not force_refresh and time.time() < current[1]:
            return current[0]
        with self._lock:
            current = self._current
            fresh = current is not None and time.time() < current[1]
            replaced = rejected is not None and current is not None and current[0] != rejected
            if current is not None and fresh and (not force_refresh or replaced):
                return current[0]
            return self._acquire(force_refresh, rejected)

    def raw_token(self) -> str:
        """The token as Graph gets it, e.g. for roles(); never log it."""
        return self.token()

    def roles(self) -> list[str]:
        """The app roles granted in the current token (``Mail.Send`` is required)."""
        roles = token_claims(self.token()).get("roles")
        return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []

    def close(self) -> None:
        self._current = None

    def _acquire(self, force_refresh: bool, rejected: str | None) -> str:
        store = self._store
        locked = False
        if store.usable():
            try:
                store.lock.acquire()
                locked = True
                store.load(self._cache, self._http_cache)
            except Exception as exc:  # disk or lock trouble must not stop delivery
                store.warn("reading", exc)
        try:
            if force_refresh:
                self._forget(rejected)
            result = self._call_msal()
            if locked:
                try:
                    store.save(self._cache, self._http_cache)
                except Exception as exc:
                    store.warn("writing", exc)
        finally:
            if locked:
                store.lock.release()
        token = result.get("access_token")
        if not isinstance(token, str) or not token:
            raise classify_token_error(result)
        now = time.time()
        try:
            until = now + float(result.get("expires_in", 0)) - EXPIRY_MARGIN
        except (TypeError, ValueError):
            until = now
        refresh_on = result.get("refresh_on")
        if isinstance(refresh_on, (int, float)):
            until = min(until, float(refresh_on))
        self._current = (token, until)
        if result.get("token_source") != "cache":
            self.fetches += 1
            log.info(
                kv(event="token", credential=self.spec.kind, expires_in=result.get("expires_in"))
            )
        return token

    def _forget(self, rejected: str | None) -> None:
        """Drop the refused token from the cache so msal has to fetch a new one."""
        self._current = None
        at_type = self._cache.CredentialType.ACCESS_TOKEN
        for entry in list(self._cache.search(at_type)):
            if rejected is None or entry.get("secret") == rejected:
                self._cache.remove_at(entry)

    def _call_msal(self) -> dict[str, Any]:
        try:
            if self._app is None:
                self._app = self._app_factory(
                    self.spec, self.endpoints, self._cache, self._http_cache
                )
            if self.spec.kind == "managed_identity":
                result = self._app.acquire_token_for_client(resource=self.endpoints.graph_resource)
            else:
                result = self._app.acquire_token_for_client(scopes=[self.endpoints.scope])
        except DeliveryError:
            raise
        except requests.RequestException as exc:
            raise network_error("cannot reach the identity platform", exc) from None
        except OSError as exc:  # the federated token file vanished or became unreadable
            raise ConfigurationFailure(
                f"cannot read FEDERATED_TOKEN_FILE {self.spec.token_file}: {exc.strerror}; "
                "check the workload identity setup"
            ) from None
        except Exception as exc:
            raise _msal_exception(exc) from None
        if not isinstance(result, dict):
            raise TemporaryFailure("the identity platform gave no usable answer")
        return result


def _msal_exception(exc: Exception) -> DeliveryError:
    from msal.exceptions import MsalServiceError

    if isinstance(exc, MsalServiceError):  # msal raises this for token endpoint 5xx
        return TemporaryFailure(f"the identity platform failed: {one_line(str(exc))}")
    if type(exc).__name__ == "ManagedIdentityError" or isinstance(exc, ValueError):
        # Discovery of an unknown tenant or host, a bad managed identity value
        # or a non-JSON token reply: an admin has to look.
        return ConfigurationFailure(
            f"cannot use the configured credential: {one_line(str(exc))}; "
            "check TENANT_ID, CLOUD/AUTHORITY_HOST and the credential"
        )
    return ConfigurationFailure(
        f"cannot use the configured credential: unexpected {type(exc).__name__}"
    )


def build_app(
    spec: CredentialSpec,
    ends: Endpoints,
    cache: Any,
    http_cache: dict[str, Any],
    network: Network | None = None,
) -> Any:
    """The msal client for a credential; may do network I/O (authority discovery)."""
    import msal

    session = _TimeoutSession(network)
    if spec.kind == "managed_identity":
        identity: Any
        if spec.identity.lower() == "system":
            identity = msal.SystemAssignedManagedIdentity()
        elif spec.identity.startswith("/"):
            identity = msal.UserAssignedManagedIdentity(resource_id=spec.identity)
        else:
            identity = msal.UserAssignedManagedIdentity(client_id=spec.identity)
        return msal.ManagedIdentityClient(
            identity, http_client=session, token_cache=cache, http_cache=http_cache
        )
    credential: Any
    if spec.kind == "secret":
        credential = spec.secret
    elif spec.kind == "certificate":
        credential = {
            "private_key": spec.private_key_pem,
            "public_certificate": spec.certificate_pem,
        }
        if spec.passphrase:
            credential["passphrase"] = spec.passphrase
    elif spec.kind == "federated":
        path = spec.token_file
        credential = {"client_assertion": lambda: read_token_file(path)}
    else:
        raise ConfigError(f"unknown credential kind {spec.kind}")
    return msal.ConfidentialClientApplication(
        spec.client_id,
        client_credential=credential,
        authority=ends.authority(spec.tenant),
        token_cache=cache,
        http_cache=http_cache,
        http_client=session,
        instance_discovery=ends.instance_discovery,
        app_name="mssendmail",
    )
