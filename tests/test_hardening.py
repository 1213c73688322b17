"""The low and admin-tool items of issue 12: logs, umask, numbers, hostile records."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mssendmail.config import Config
from mssendmail.delivery.prepare import prepare
from mssendmail.errors import ConfigError
from mssendmail.logs import kv
from mssendmail.spool.layout import QUEUE, Spool
from tests.test_poison import plant_in_queue

ROOT = str(Path(__file__).resolve().parent.parent)


def test_control_characters_in_any_logged_value_are_escaped() -> None:
    forged = "tmp.x\nINFO id=1 outcome=sent\r\x1b[2J\x00"
    line = kv(event="removed-abandoned", entry=forged)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert line == (
        'event=removed-abandoned entry="tmp.x\\x0aINFO id=1 outcome=sent\\x0d\\x1b[2J\\x00"'
    )
    assert kv(a="back\\slash") == 'a="back\\\\slash"'  # a literal \x0a cannot pass as one
    assert kv(a="plain", b=None) == "a=plain b=-"


def test_header_recipients_outside_the_envelope_are_one_line() -> None:
    to = ", ".join(f"u{i}@example.com" for i in range(500))
    env = {"v": 1, "recipients": ["a@example.com"], "sender": "", "time": 1.7e9}
    message = f"To: {to}\nSubject: s\n\nx\n".encode()
    prepared = prepare(message, env, Config({"SENDER": "relay@example.com"}), "q")
    lines = [w for w in prepared.warnings if "envelope recipient" in w]
    assert len(lines) == 1
    assert lines[0].startswith("500 header recipients") and "and 497 more" in lines[0]


@pytest.mark.parametrize("bad", ["1e400", "nan", "inf", "1e400s", "-1"])
def test_numeric_config_values_are_range_checked(bad: str) -> None:
    for key in ("MAX_AGE", "RETRY_MAX", "GRAPH_TIMEOUT"):
        with pytest.raises(ConfigError, match=key):
            Config({key: bad}).seconds(key)
    with pytest.raises(ConfigError, match="MAX_MESSAGE_SIZE"):
        assert Config({"MAX_MESSAGE_SIZE": bad}).max_message_size is None


def _queue(args: list[str], config_file: Path) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from mssendmail.admin.cli import main;"
        " sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("bad", [1e20, math.nan, math.inf])
def test_admin_tools_show_a_hostile_time_as_bad_and_keep_json_valid(
    spool: Spool, config_file: Path, clean_env: None, bad: float
) -> None:
    qid = plant_in_queue(spool, b"Subject: t\n\nx\n", time=bad)
    for args in (["list"], ["show", qid], ["stats"]):
        proc = _queue(args, config_file)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    listed = _queue(["list", "--json"], config_file)
    assert listed.returncode == 0, listed.stderr

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    rows = [json.loads(line, parse_constant=no_constants) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == [qid]
    assert spool.ids(QUEUE) == [qid]


def test_stats_prometheus_into_a_missing_directory_is_one_line_and_73(
    spool: Spool, config_file: Path, clean_env: None, tmp_path: Path
) -> None:
    proc = _queue(["stats", "--prometheus", str(tmp_path / "nope" / "m.prom")], config_file)
    assert proc.returncode == 73
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_worker_sets_umask_027_whoever_starts_it(
    spool: Spool, config_file: Path, clean_env: None, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    with config_file.open("a") as fh:
        fh.write(f"LOG_DIR={logs}\n")
    code = (
        f"import os, sys; sys.path.insert(0, {ROOT!r}); os.umask(0o022);"
        " from mssendmail.delivery.worker import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--once", "--config", str(config_file)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "WORKER_CPU": "all"},
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(logs.stat().st_mode) == 0o750
    assert stat.S_IMODE((logs / "mssendmail.log").stat().st_mode) == 0o640


def test_check_states_the_allowed_from_trust_model() -> None:
    from mssendmail.admin import checks

    none = checks.check_allowed_from(Config({"SENDER": "relay@x.org"}))
    assert none.status == checks.PASS and "may send as relay@x.org;" in none.detail
    domain = checks.check_allowed_from(Config({"ALLOWED_FROM": "a@x.org,@example.org"}))
    assert domain.status == checks.WARN
    assert "every local user" in domain.detail and "@example.org" in domain.detail
    single = checks.check_allowed_from(Config({"ALLOWED_FROM": "a@x.org"}))
    assert single.status == checks.PASS
