"""WORKER_CPU: which CPU the worker keeps its threads on (mssendmail.delivery.affinity)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mssendmail.delivery.affinity import choose, current_cpu
from mssendmail.errors import ConfigError, exit_code
from tests.reliability_helpers import WORKER

ALLOWED = {0, 1, 2, 3}


def test_auto_keeps_the_cpu_it_started_on() -> None:
    assert choose("auto", ALLOWED, 2) == 2
    assert choose(" AUTO ", ALLOWED, 1) == 1


def test_auto_falls_back_to_an_allowed_cpu_when_the_current_one_is_unknown() -> None:
    assert choose("auto", ALLOWED, None) == 3
    assert choose("auto", {0, 5}, 7) == 5


def test_auto_leaves_a_single_cpu_machine_alone() -> None:
    assert choose("auto", {0}, 0) is None


def test_all_and_a_number() -> None:
    assert choose("all", ALLOWED, 1) is None
    assert choose("3", ALLOWED, 1) == 3


@pytest.mark.parametrize("bad", ["7", "-1", "one", "0,1", ""])
def test_bad_values_are_config_errors_with_the_fix(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        choose(bad, ALLOWED, 0)
    assert "WORKER_CPU" in str(err.value) and "auto" in str(err.value)
    assert exit_code(err.value) == 78


def test_current_cpu_is_one_this_process_may_use() -> None:
    assert current_cpu() in os.sched_getaffinity(0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a machine with 2+ CPUs")
def test_apply_pins_threads_started_afterwards() -> None:
    code = textwrap.dedent(
        """
        import os, threading
        from mssendmail.delivery.affinity import apply
        cpu = apply("auto")
        seen = []
        t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        t.start(); t.join()
        print(cpu, sorted(os.sched_getaffinity(0)), sorted(seen[0]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    cpu = int(out[0])
    assert out[1].strip() == f"[{cpu}] [{cpu}]"


def test_worker_refuses_a_cpu_it_may_not_use(tmp_path: Path) -> None:
    cfg = tmp_path / "w.env"
    cfg.write_text(
        f"QUEUE_DIR={tmp_path / 'q'}\nSENDER=relay@example.com\nTRANSPORT=file\n"
        f"OUTBOX_DIR={tmp_path / 'out'}\nWORKER_CPU=4096\n"
    )
    result = subprocess.run(
        [WORKER, "--once", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78
    assert "WORKER_CPU=4096" in result.stderr and "Traceback" not in result.stderr
