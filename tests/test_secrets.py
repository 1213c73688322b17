"""Secrets: no client secret and no access token in any log, spool or state file.

test_worker_logs_and_spool_hold_no_secret runs the worker verbosely through
the paths most likely to leak (token fetch, 401 and refresh, a refused
secret, a dead letter) and scans what it wrote.

test_session_* runs after every other test of the session (the hook below,
active because this module names itself in pytest_plugins, moves it to the
end) and scans everything the whole run produced under pytest's base
temp directory: every spool tree (maildrop, queue, meta, sent, dead,
corrupt, state/...) and every *.log file, including the worker stderr that
the reliability suites keep and the LOG_DIR files of every worker they ran.
It searches for every client secret (those the fakes were started with and
every CLIENT_SECRET in a config file), every access token a RecordingFake
issued or a worker cached, their base64 forms, and the JWT header that
starts every token the fake issues (which also catches tokens of fakes in
other suites). The msal token cache (state/msal-token-cache.json) holds
tokens by design; it is checked for mode 0600 instead.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from mssendmail.spool.layout import DEAD
from tests.fakegraph import Fault
from tests.reliability_helpers import (
    CLIENT_SECRETS,
    FAKE_TOKEN_PREFIX,
    ISSUED_TOKENS,
    assert_no_traceback,
    delivered,
    fake_graph,
    find_leaks,
    graph_config,
    make_spool,
    queue_direct,
    run_worker,
    scan_targets,
    secrets_in_configs,
    tokens_in_cache,
)

# This module is also a plugin, for the one hook below: the session-wide
# scan must run after every other test, whatever the file order.
pytest_plugins = ["tests.test_secrets"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last = [i for i in items if i.nodeid.startswith("tests/test_secrets.py::test_session")]
    items[:] = [i for i in items if i not in last] + last


def needles_for(base: Path, caches: list[Path]) -> set[str]:
    found = set(CLIENT_SECRETS) | secrets_in_configs(base) | set(ISSUED_TOKENS)
    for cache in caches:
        found.update(tokens_in_cache(cache))
    found.add(FAKE_TOKEN_PREFIX)
    return found


def check_caches(caches: list[Path]) -> None:
    for cache in caches:
        mode = stat.S_IMODE(os.stat(cache).st_mode)
        assert mode == 0o600, f"{cache} has mode {mode:o}"


def test_worker_logs_and_spool_hold_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make_spool(tmp_path / "queue")
    with fake_graph(tmp_path / "fake", monkeypatch) as fake:
        cfg = graph_config(tmp_path / "s.env", tmp_path / "queue", fake)
        queue_direct(spool, ["s-1", "s-2"])
        fake.script(Fault.error(400, code="ErrorInvalidRecipients"))
        first = run_worker(cfg, fake, "-v")
        fake.revoke_tokens()  # the cached token now gets a 401, then a refresh
        queue_direct(spool, ["s-3"])
        second = run_worker(cfg, fake, "-v")
        wrong = graph_config(
            tmp_path / "wrong.env", tmp_path / "queue", fake, CLIENT_SECRET="wrong-" + fake.secret
        )
        (spool_state := tmp_path / "queue" / "state" / "msal-token-cache.json").unlink()
        queue_direct(spool, ["s-4"])
        third = run_worker(wrong, fake, "-v")
        got = delivered(fake)
        issued = len(ISSUED_TOKENS)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert third.returncode == 75, third.stderr
    assert_no_traceback(first.stderr, second.stderr, third.stderr)
    assert sum(got.values()) == 2 and len(spool.ids(DEAD)) == 1
    assert issued >= 2  # a first token and the refreshed one
    assert not spool_state.exists() or stat.S_IMODE(spool_state.stat().st_mode) == 0o600

    files, caches = scan_targets(tmp_path)
    names = {p.name for p in files}
    assert "mssendmail.log" in names and "worker-runs.stderr.log" in names
    assert any(p.parent.name == DEAD for p in files)
    needles = needles_for(tmp_path, caches)
    assert fake.secret in needles and "wrong-" + fake.secret in needles
    check_caches(caches)
    assert find_leaks(files, needles) == []


def test_find_leaks_sees_a_planted_token_and_secret(tmp_path: Path) -> None:
    """The scanner itself can fail: plain, base64 and prefix-only forms are found."""
    import base64

    base = tmp_path / "planted"
    try:
        make_spool(base / "queue")
        token = FAKE_TOKEN_PREFIX + ".payload.signature"
        (base / "queue" / "meta" / "x.json").write_text(f'{{"auth": "Bearer {token}"}}')
        (base / "w.log").write_bytes(base64.b64encode(b"hunter2-secret"))
        (base / "queue" / "state" / "other.json").write_text("eyJ" + FAKE_TOKEN_PREFIX[3:])
        files, _ = scan_targets(base)
        hits = find_leaks(files, {token, "hunter2-secret", FAKE_TOKEN_PREFIX})
        assert len({h.split(":")[0] for h in hits}) == 3, hits
    finally:
        shutil.rmtree(base)  # planted on purpose: keep it out of the session-wide scan


def test_session_every_log_spool_and_state_file_is_free_of_secrets(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.getbasetemp()
    files, caches = scan_targets(base)
    assert files, f"nothing to scan under {base}"
    needles = needles_for(base, caches)
    check_caches(caches)
    leaks = find_leaks(files, needles)
    print(f"scanned {len(files)} files for {len(needles)} secrets and tokens under {base}")
    assert leaks == [], "\n".join(leaks[:20])
