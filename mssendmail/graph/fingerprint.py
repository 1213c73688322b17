"""A fingerprint of the credential settings, to notice when an admin changed them.

Used for two things: the queue pause records which settings failed (so a
worker with other settings lifts it), and the msal token cache records
which settings fetched its tokens (so a changed secret or certificate is
proved by a fresh token request instead of riding on a cached token for up
to an hour).

It is a SHA-256 over the credential keys, the endpoint keys and the bytes
of the CLIENT_CERTIFICATE file. It is never the secret: the hash is stored
only in state/ (0640/0600, group mssendmail), whose readers may read the
.env with the secret in it anyway. The federated token file's contents
rotate hourly, so only its path counts.
"""

from __future__ import annotations

import hashlib

from mssendmail.config import Config

KEYS = (
    "TENANT_ID",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CLIENT_CERTIFICATE",
    "CLIENT_CERTIFICATE_PASSWORD",
    "FEDERATED_TOKEN_FILE",
    "MANAGED_IDENTITY",
    "CLOUD",
    "AUTHORITY_HOST",
    "GRAPH_URL",
)
CERT_MAX_BYTES = 1024 * 1024


def of(cfg: Config) -> str:
    """A short hex digest that changes whenever the credential settings change."""
    digest = hashlib.sha256(b"mssendmail-credential-v1\0")
    for key in KEYS:
        digest.update(key.encode() + b"=" + cfg.get(key).encode("utf-8", "replace") + b"\0")
    path = cfg.get("CLIENT_CERTIFICATE")
    if path:
        try:
            with open(path, "rb") as fh:
                digest.update(fh.read(CERT_MAX_BYTES))
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
    return digest.hexdigest()[:32]
