"""Shared fixtures: a fresh spool per test, and a config pointing at it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail.spool.layout import Spool, init_tree


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    root = tmp_path / "queue"
    init_tree(str(root))
    return root


@pytest.fixture
def spool(spool_dir: Path) -> Spool:
    return Spool(str(spool_dir))


@pytest.fixture
def config_file(tmp_path: Path, spool_dir: Path) -> Path:
    """A minimal file-transport config; tests append keys as they need."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    path = tmp_path / "mssendmail.env"
    path.write_text(
        f"QUEUE_DIR={spool_dir}\nTRANSPORT=file\nOUTBOX_DIR={outbox}\n"
        "SENDER=relay@example.com\nRETRY_MIN=1s\nRETRY_MAX=2s\n"
    )
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> Iterator[None]:
    """No config key leaks in from the developer's environment."""
    from mssendmail.config import DEFAULTS, ENV_PATH_VAR

    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(ENV_PATH_VAR, str(config_file))
    os.environ.pop("NO_COLOR", None)
    yield


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """An in-process main() runs logs.setup(), which stops propagation to the root
    logger, and sets the umask; undo both after each test."""
    logger = logging.getLogger("mssendmail")
    saved = (logger.propagate, list(logger.handlers), logger.level)
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    # The worker's main() sets umask 027 for itself; in-process it would leave
    # later tests' files unreadable by the other users those tests run as.
    os.umask(umask)
    logger.propagate, logger.level = saved[0], saved[2]
    for handler in list(logger.handlers):
        if handler not in saved[1]:
            logger.removeHandler(handler)
            handler.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.accounts import remove_created

    remove_created()
