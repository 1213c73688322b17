"""Shared helpers for the reliability suites (crash, faults, disk full, hostile, load, secrets).

The suites run the real programs (``mssendmail``, ``mssendmail-worker``) as
subprocesses against the in-process strict fake Graph (tests/fakegraph.py).
Every message carries a unique marker in its Subject, so what the fake
accepted can be matched against what the submitters were told.

Secrets: every fake started here is a ``RecordingFake`` that remembers each
access token it issued and its client secret (in ISSUED_TOKENS and
CLIENT_SECRETS, for the whole pytest session), and every worker runs with
LOG_DIR set, so tests/test_secrets.py can grep all of it afterwards.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mssendmail.spool.layout import Spool, init_tree
from mssendmail.submission.writer import Submission, make_envelope
from tests.fakegraph import FakeGraph

BIN = Path(sys.executable).parent
MSSENDMAIL = str(BIN / "mssendmail")
WORKER = str(BIN / "mssendmail-worker")
SENDER = "relay@contoso.example"
RCPT = "alice@example.org"

# Session-wide record of what must never leak (see tests/test_secrets.py).
ISSUED_TOKENS: list[str] = []
CLIENT_SECRETS: set[str] = {"fake-client-secret"}

# Every token the fake issues starts with this JWT header (tests/fakegraph.py _issue).
FAKE_TOKEN_PREFIX = (
    base64.urlsafe_b64encode(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "fake"}).encode())
    .rstrip(b"=")
    .decode()
)


class RecordingFake(FakeGraph):
    """The strict fake, remembering every token it issues (for the secrets scan)."""

    def _issue(self, client_id: str, resource: str) -> tuple[str, int]:
        token, lifetime = super()._issue(client_id, resource)
        ISSUED_TOKENS.append(token)
        return token, lifetime


@contextlib.contextmanager
def fake_graph(
    directory: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> Iterator[RecordingFake]:
    """A started RecordingFake with a random secret; this process trusts its CA."""
    secret = kwargs.pop("secret", None) or "s3cr3t-" + secrets.token_urlsafe(18)
    CLIENT_SECRETS.add(secret)
    fake = RecordingFake(directory, secret=secret, **kwargs).start()
    try:
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        yield fake
    finally:
        fake.stop()


def make_spool(root: Path) -> Spool:
    init_tree(str(root))
    return Spool(str(root))


def graph_config(
    path: Path, spool_root: Path, fake: FakeGraph, log_dir: Path | None = None, **extra: str
) -> Path:
    """A client-secret config against the fake; LOG_DIR defaults to <path's dir>/log."""
    values = {
        **fake.config(),
        "QUEUE_DIR": str(spool_root),
        "SENDER": SENDER,
        "LOG_DIR": str(log_dir or path.parent / "log"),
        "RETRY_MIN": "1s",
        "RETRY_MAX": "2s",
        "GRAPH_TIMEOUT": "5s",
        **extra,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def env_for(cfg: Path, fake: FakeGraph | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSENDMAIL")}
    for key in ("QUEUE_DIR", "CLIENT_SECRET", "TRANSPORT", "CONCURRENCY", "LOG_DIR"):
        env.pop(key, None)
    if fake is not None:
        env.update(fake.env())
    env["MSSENDMAIL_CONFIG"] = str(cfg)
    return env


def run_worker(
    cfg: Path, fake: FakeGraph | None = None, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """mssendmail-worker --once; its stderr is also kept in <cfg dir>/log for the secrets scan."""
    result = subprocess.run(
        [WORKER, "--once", *args],
        capture_output=True,
        text=True,
        env=env_for(cfg, fake),
        timeout=timeout,
    )
    keep = cfg.parent / "log"
    keep.mkdir(exist_ok=True)
    with open(keep / "worker-runs.stderr.log", "a") as fh:
        fh.write(result.stderr)
    return result


def message(marker: str, rcpt: str = RCPT, body: bytes = b"body\n") -> bytes:
    return f"To: {rcpt}\nSubject: {marker}\n\n".encode() + body


def queue_direct(spool: Spool, markers: Iterable[str], rcpt: str = RCPT) -> list[str]:
    """Submit through the real Submission writer in-process (fast); returns queue ids."""
    ids = []
    for marker in markers:
        with Submission(spool, 1 << 20) as sub:
            sub.write(message(marker, rcpt))
            ids.append(sub.commit(make_envelope("", [rcpt])))
    return ids


def delivered(fake: FakeGraph) -> collections.Counter[str]:
    """How many times the fake accepted each Subject (marker)."""
    return collections.Counter(str(m.subject) for m in list(fake.messages))


def spool_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def temp_leftovers(root: Path) -> list[str]:
    """Temp files anywhere in a spool tree (submission, pickup copies, atomic writes)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith("tmp.") or p.name.endswith(".tmp")
    )


def message_areas(root: Path) -> dict[str, list[str]]:
    areas = ("maildrop", "queue", "active", "deferred", "hold", "dead", "corrupt")
    return {a: sorted(os.listdir(root / a)) for a in areas}


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text[-3000:]


# ---- the secrets scan -------------------------------------------------------------

TOKEN_CACHE_NAME = "msal-token-cache.json"  # the one file where tokens live by design


def is_spool(path: Path) -> bool:
    return (path / "maildrop").is_dir() and (path / "state").is_dir()


def scan_targets(base: Path) -> tuple[list[Path], list[Path]]:
    """(files to scan, token caches) under base: every spool tree and every log file.

    Scanned: each file in every spool tree (messages, meta, sent, dead and
    corrupt records, state/) and every mssendmail.log* and *.log anywhere.
    Not scanned: config files (the secret belongs there) and the fake's own
    certificate directory. state/msal-token-cache.json holds access tokens by
    design (0600); it is returned separately so the caller can check its mode
    and learn the tokens that reached a worker.
    """
    files: set[Path] = set()
    caches: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        if is_spool(here):
            for p in here.rglob("*"):
                if p.is_symlink() or not p.is_file():
                    continue
                if p.name == TOKEN_CACHE_NAME:
                    caches.append(p)
                else:
                    files.add(p)
            dirnames[:] = []
            continue
        for name in filenames:
            if name.startswith("mssendmail.log") or name.endswith(".log"):
                p = here / name
                if p.is_file() and not p.is_symlink():
                    files.add(p)
    return sorted(files), caches


def tokens_in_cache(path: Path) -> list[str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    tokens = []
    for entry in (doc.get("AccessToken") or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("secret"), str):
            tokens.append(entry["secret"])
    return tokens


def secrets_in_configs(base: Path) -> set[str]:
    """CLIENT_SECRET values from every .env config under base (long enough to grep for)."""
    found = set()
    for p in base.rglob("*.env"):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("CLIENT_SECRET", "CLIENT_CERTIFICATE_PASSWORD"):
                value = value.strip().strip("'\"")
                if len(value) >= 8:
                    found.add(value)
    return found


def find_leaks(files: Iterable[Path], needles: Iterable[str]) -> list[str]:
    """'path: what' for every file holding one of the needles (bytes, base64 too)."""
    forms: list[tuple[bytes, str]] = []
    for needle in set(needles):
        if len(needle) < 8:
            continue
        raw = needle.encode()
        label = needle[:6] + "..."
        forms.append((raw, label))
        if needle != FAKE_TOKEN_PREFIX:
            forms.append((base64.b64encode(raw), label + " (base64)"))
    hits = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for form, label in forms:
            if form in data:
                hits.append(f"{path}: {label}")
    return hits
