"""credentials: choosing the credential, each msal construction, and the on-disk caches.

Token requests go to the strict local fake (real msal, real HTTPS); each test
builds new TokenProvider (so new msal app) instances, because msal replays
errors per app instance.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import stat
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mssendmail.config import Config
from mssendmail.errors import ConfigError, ConfigurationFailure, TemporaryFailure
from mssendmail.graph.clouds import endpoints
from mssendmail.graph.credentials import (
    HTTP_CACHE_FILE,
    TOKEN_CACHE_FILE,
    TokenProvider,
    build_app,
    select,
    token_claims,
)
from tests.fakegraph import FakeGraph, Fault, running


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    for key in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(key, raising=False)
    with running(tmp_path / "fake", monkeypatch) as server:
        yield server


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def provider(fake: FakeGraph, state: Path | None, **overrides: str) -> TokenProvider:
    values = fake.config()
    values.update(overrides)
    values = {k: v for k, v in values.items() if v}
    cfg = Config(values)
    return TokenProvider(select(cfg), endpoints(cfg), str(state) if state else None)


def make_cert(tmp_path: Path, password: str | None = None) -> tuple[Path, bytes]:
    """A PEM file with key + self-signed cert (cert first, to check reordering)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mssendmail test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    encryption: Any = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "client.pem"
    path.write_bytes(cert_pem + key_pem)
    path.chmod(0o600)
    return path, cert_pem


# -- choosing exactly one credential -------------------------------------------


def test_no_credential_names_every_key() -> None:
    with pytest.raises(ConfigError) as exc:
        select(Config({"TENANT_ID": "t", "CLIENT_ID": "c"}))
    for key in ("CLIENT_SECRET", "CLIENT_CERTIFICATE", "FEDERATED_TOKEN_FILE", "MANAGED_IDENTITY"):
        assert key in str(exc.value)


def test_several_credentials_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        select(
            Config(
                {
                    "TENANT_ID": "t",
                    "CLIENT_ID": "c",
                    "CLIENT_SECRET": "s3cr3t-value",
                    "MANAGED_IDENTITY": "system",
                }
            )
        )
    assert "CLIENT_SECRET" in str(exc.value) and "MANAGED_IDENTITY" in str(exc.value)
    assert "s3cr3t-value" not in str(exc.value)


@pytest.mark.parametrize("missing", ["TENANT_ID", "CLIENT_ID"])
def test_secret_needs_tenant_and_client(missing: str) -> None:
    values = {"TENANT_ID": "t", "CLIENT_ID": "c", "CLIENT_SECRET": "s"}
    del values[missing]
    with pytest.raises(ConfigError, match=missing):
        select(Config(values))


def test_bad_tenant_is_refused() -> None:
    with pytest.raises(ConfigError, match="TENANT_ID"):
        select(Config({"TENANT_ID": "a/../b", "CLIENT_ID": "c", "CLIENT_SECRET": "s"}))


def test_password_without_certificate_is_refused() -> None:
    with pytest.raises(ConfigError, match="CLIENT_CERTIFICATE_PASSWORD"):
        select(Config({"MANAGED_IDENTITY": "system", "CLIENT_CERTIFICATE_PASSWORD": "pw"}))


def test_unreadable_federated_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FEDERATED_TOKEN_FILE"):
        select(
            Config(
                {
                    "TENANT_ID": "t",
                    "CLIENT_ID": "c",
                    "FEDERATED_TOKEN_FILE": str(tmp_path / "absent"),
                }
            )
        )


def test_spec_repr_hides_secret_and_key(tmp_path: Path) -> None:
    spec = select(Config({"TENANT_ID": "t", "CLIENT_ID": "c", "CLIENT_SECRET": "hunter2-xyz"}))
    assert "hunter2-xyz" not in repr(spec)
    path, _ = make_cert(tmp_path, "pw-123")
    spec = select(
        Config(
            {
                "TENANT_ID": "t",
                "CLIENT_ID": "c",
                "CLIENT_CERTIFICATE": str(path),
                "CLIENT_CERTIFICATE_PASSWORD": "pw-123",
            }
        )
    )
    assert "PRIVATE KEY" not in repr(spec) and "pw-123" not in repr(spec)


# -- each credential type against the fake ----------------------------------------


def test_client_secret(fake: FakeGraph) -> None:
    tokens = provider(fake, None)
    token = tokens.token()
    assert token_claims(token)["roles"] == ["Mail.Send"]
    assert tokens.roles() == ["Mail.Send"]
    assert [r.kind for r in fake.token_requests] == ["secret"]
    assert fake.token_requests[0].scope == "https://graph.microsoft.com/.default"
    # Reused from memory: no second request.
    assert tokens.token() == token
    assert len(fake.token_requests) == 1


def test_wrong_secret_is_a_configuration_failure_without_the_secret(fake: FakeGraph) -> None:
    tokens = provider(fake, None, CLIENT_SECRET="wrong-secret-4711")
    with pytest.raises(ConfigurationFailure) as exc:
        tokens.token()
    assert exc.value.code == "invalid_client"
    assert "AADSTS7000215" in str(exc.value)
    text = "".join(
        traceback.format_exception(type(exc.value), exc.value, exc.value.__traceback__)
    ) + repr(tokens)
    assert "wrong-secret-4711" not in text
    assert [r.status for r in fake.token_requests] == [401]


def test_unknown_tenant_is_a_configuration_failure(fake: FakeGraph) -> None:
    with pytest.raises(ConfigurationFailure, match="TENANT_ID"):
        provider(fake, None, TENANT_ID="other-tenant").token()


def test_token_endpoint_outage_is_temporary(fake: FakeGraph) -> None:
    fake.script_token(Fault.error(503, retry_after="1"))
    with pytest.raises(TemporaryFailure):
        provider(fake, None).token()


def test_unreachable_identity_platform_is_temporary(fake: FakeGraph) -> None:
    port = fake.port
    fake.stop()
    with pytest.raises(TemporaryFailure, match="identity platform"):
        provider(fake, None, AUTHORITY_HOST=f"https://127.0.0.1:{port}").token()


@pytest.mark.parametrize("password", [None, "pem-pass-1"])
def test_certificate_sends_x5c_signed_assertion(
    fake: FakeGraph, tmp_path: Path, password: str | None
) -> None:
    path, cert_pem = make_cert(tmp_path, password)
    fake.register_certificate(cert_pem)
    tokens = provider(
        fake,
        None,
        CLIENT_SECRET="",
        CLIENT_CERTIFICATE=str(path),
        CLIENT_CERTIFICATE_PASSWORD=password or "",
    )
    assert tokens.spec.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    tokens.token()
    # The fake accepts it only with a valid signature by the registered cert in x5c.
    assert [(r.kind, r.status) for r in fake.token_requests] == [("certificate", 200)]


def test_certificate_not_registered_is_refused(fake: FakeGraph, tmp_path: Path) -> None:
    path, _ = make_cert(tmp_path)
    tokens = provider(fake, None, CLIENT_SECRET="", CLIENT_CERTIFICATE=str(path))
    with pytest.raises(ConfigurationFailure):
        tokens.token()
    assert [(r.kind, r.status) for r in fake.token_requests] == [("assertion", 401)]


def test_certificate_wrong_password(tmp_path: Path) -> None:
    path, _ = make_cert(tmp_path, "right")
    base = {"TENANT_ID": "t", "CLIENT_ID": "c", "CLIENT_CERTIFICATE": str(path)}
    with pytest.raises(ConfigError, match="CLIENT_CERTIFICATE_PASSWORD"):
        select(Config({**base, "CLIENT_CERTIFICATE_PASSWORD": "wrong"}))
    with pytest.raises(ConfigError, match="CLIENT_CERTIFICATE_PASSWORD"):
        select(Config(base))


def test_certificate_file_without_cert(tmp_path: Path) -> None:
    path, _ = make_cert(tmp_path)
    text = path.read_text()
    path.write_text(text[text.index("-----BEGIN PRIVATE KEY") :])
    with pytest.raises(ConfigError, match="PEM"):
        select(Config({"TENANT_ID": "t", "CLIENT_ID": "c", "CLIENT_CERTIFICATE": str(path)}))


def test_federated_file_is_reread_on_each_request(fake: FakeGraph, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("federated-one\n")
    fake.federated_assertions |= {"federated-one", "federated-two"}
    tokens = provider(fake, None, CLIENT_SECRET="", FEDERATED_TOKEN_FILE=str(token_file))
    first = tokens.token()
    token_file.write_text("federated-two")  # kubelet rotated it
    second = tokens.token(force_refresh=True, rejected=first)
    assert second != first
    assert [r.assertion for r in fake.token_requests] == ["federated-one", "federated-two"]
    assert {r.kind for r in fake.token_requests} == {"federated"}


def test_federated_file_vanishing_later_is_a_configuration_failure(
    fake: FakeGraph, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("federated-one")
    tokens = provider(fake, None, CLIENT_SECRET="", FEDERATED_TOKEN_FILE=str(token_file))
    token_file.unlink()
    with pytest.raises(ConfigurationFailure, match="FEDERATED_TOKEN_FILE"):
        tokens.token()


@pytest.mark.parametrize(
    ("identity", "expected"),
    [("system", "system"), ("11111111-2222-3333-4444-555555555555", None)],
)
def test_managed_identity(
    fake: FakeGraph, monkeypatch: pytest.MonkeyPatch, identity: str, expected: str | None
) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", fake.url)
    cfg = Config({"MANAGED_IDENTITY": identity, "GRAPH_URL": fake.url})
    tokens = TokenProvider(select(cfg), endpoints(cfg), None)
    assert tokens.roles() == ["Mail.Send"]
    [record] = fake.token_requests
    assert record.kind == "managed_identity"
    assert record.client_id == (expected or identity)
    assert record.scope == "https://graph.microsoft.com"  # MI takes a resource, not a scope


@pytest.mark.parametrize("value", ["yes", "true", "1234", "subscriptions/x"])
def test_managed_identity_value_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="MANAGED_IDENTITY"):
        select(Config({"MANAGED_IDENTITY": value}))


def test_managed_identity_builds_the_right_msal_objects() -> None:
    cfg = Config({"MANAGED_IDENTITY": "/subscriptions/s/resourcegroups/g/providers/x/y"})
    spec = select(cfg)
    app = build_app(spec, endpoints(cfg), msal.SerializableTokenCache(), {})
    assert isinstance(app, msal.ManagedIdentityClient)
    assert app._managed_identity["ManagedIdentityIdType"] == "ResourceId"


def test_secret_app_uses_authority_and_no_instance_discovery_for_the_fake(
    fake: FakeGraph,
) -> None:
    cfg = Config(fake.config())
    app = build_app(select(cfg), endpoints(cfg), msal.SerializableTokenCache(), {})
    assert isinstance(app, msal.ConfidentialClientApplication)
    assert app.authority.token_endpoint == f"{fake.url}/{fake.tenant}/oauth2/v2.0/token"
    assert endpoints(cfg).instance_discovery is False


# -- caching, refresh, persistence ------------------------------------------------


def test_force_refresh_replaces_only_the_rejected_token(fake: FakeGraph) -> None:
    tokens = provider(fake, None)
    first = tokens.token()
    second = tokens.token(force_refresh=True, rejected=first)
    assert second != first
    # Another thread reporting the same stale token does not cause a third fetch.
    assert tokens.token(force_refresh=True, rejected=first) == second
    assert len(fake.token_requests) == 2


def test_concurrent_first_use_fetches_one_token(fake: FakeGraph) -> None:
    tokens = provider(fake, None)
    seen: list[str] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        seen.append(tokens.token())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen) == 8
    assert len(fake.token_requests) == 1


def test_short_lived_token_is_refetched(fake: FakeGraph) -> None:
    fake.token_lifetime = 200  # under msal's 5-minute margin: stale at once
    tokens = provider(fake, None)
    assert tokens.token() != tokens.token()
    assert len(fake.token_requests) == 2


def test_caches_persist_across_runs_with_mode_0600(fake: FakeGraph, state: Path) -> None:
    first = provider(fake, state).token()
    for name in (TOKEN_CACHE_FILE, HTTP_CACHE_FILE):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    assert first not in (state / HTTP_CACHE_FILE).read_text()
    discovery = sum("openid-configuration" in r.path for r in fake.requests)
    assert discovery == 1
    # The next "--once" run: a new process would build a new provider.
    again = provider(fake, state)
    assert again.token() == first
    assert again.fetches == 0
    assert len(fake.token_requests) == 1
    assert sum("openid-configuration" in r.path for r in fake.requests) == 1


def test_refresh_by_one_worker_is_seen_by_the_next(fake: FakeGraph, state: Path) -> None:
    a = provider(fake, state)
    old = a.token()
    new = a.token(force_refresh=True, rejected=old)
    assert provider(fake, state).token() == new
    assert len(fake.token_requests) == 2


def test_damaged_or_planted_cache_files_are_ignored(fake: FakeGraph, state: Path) -> None:
    (state / TOKEN_CACHE_FILE).write_text('["not", "a", "cache"]')
    (state / HTTP_CACHE_FILE).write_text("{garbage")
    tokens = provider(fake, state)
    assert tokens.token()
    doc = json.loads((state / TOKEN_CACHE_FILE).read_text())
    assert doc["AccessToken"]  # rewritten with a real cache
    # A symlink planted in place of the cache is not followed when reading.
    target = state.parent / "elsewhere.json"
    target.write_text((state / TOKEN_CACHE_FILE).read_text())
    (state / TOKEN_CACHE_FILE).unlink()
    os.symlink(target, state / TOKEN_CACHE_FILE)
    provider(fake, state).token()
    assert len(fake.token_requests) == 2


def test_missing_state_dir_means_memory_only(fake: FakeGraph, tmp_path: Path) -> None:
    tokens = provider(fake, tmp_path / "no-such-dir")
    assert tokens.token()
    assert not (tmp_path / "no-such-dir").exists()


def test_token_claims_of_opaque_tokens() -> None:
    assert token_claims("opaque") == {}
    assert token_claims("a.!!!.c") == {}
    assert token_claims("a.W10.c") == {}  # payload "[]" is not an object


def test_debug_logs_never_show_secret_or_token(
    fake: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    # The worker's logs.setup() stops propagation at "mssendmail"; listen there too.
    logging.getLogger("mssendmail").addHandler(caplog.handler)
    logging.getLogger("mssendmail").setLevel(logging.DEBUG)
    tokens = provider(fake, None)
    token = tokens.token()
    tokens.token(force_refresh=True, rejected=token)
    with pytest.raises(ConfigurationFailure):
        provider(fake, None, CLIENT_SECRET="wrong-secret-4711").token()
    text = caplog.text
    assert "event=token credential=secret" in text  # the capture works
    for secret in (fake.secret, "wrong-secret-4711", token, token.split(".")[2]):
        assert secret not in text


@pytest.mark.parametrize(
    ("values", "authority", "graph", "scope"),
    [
        ({}, "https://login.microsoftonline.com", "https://graph.microsoft.com", None),
        (
            {"CLOUD": "usgov"},
            "https://login.microsoftonline.us",
            "https://graph.microsoft.us",
            "https://graph.microsoft.us/.default",
        ),
        (
            {"CLOUD": "DoD"},
            "https://login.microsoftonline.us",
            "https://dod-graph.microsoft.us",
            "https://dod-graph.microsoft.us/.default",
        ),
        (
            {"CLOUD": "china"},
            "https://login.chinacloudapi.cn",
            "https://microsoftgraph.chinacloudapi.cn",
            None,
        ),
        (
            {"AUTHORITY_HOST": "login.example.test/", "GRAPH_URL": "https://127.0.0.1:8443/"},
            "https://login.example.test",
            "https://127.0.0.1:8443",
            "https://graph.microsoft.com/.default",  # the audience stays the cloud's
        ),
    ],
)
def test_clouds(values: dict[str, str], authority: str, graph: str, scope: str | None) -> None:
    ends = endpoints(Config(values))
    assert (ends.authority_host, ends.graph_url) == (authority, graph)
    if scope:
        assert ends.scope == scope
    known = "example.test" not in authority
    assert ends.instance_discovery is (None if known else False)
    assert ends.authority("t1") == f"{authority}/t1"


@pytest.mark.parametrize(
    "values",
    [
        {"CLOUD": "mars"},
        {"AUTHORITY_HOST": "http://login.example.test"},
        {"GRAPH_URL": "http://127.0.0.1:80"},
        {"GRAPH_URL": "https://user:pw@graph.example.test"},
        {"GRAPH_URL": "https://graph.example.test/?x=1"},
    ],
)
def test_bad_cloud_settings(values: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(values))):
        endpoints(Config(values))
