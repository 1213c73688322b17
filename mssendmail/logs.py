"""Logging: one key=value line per event, to stderr (journald) and LOG_DIR.

The file handler is a WatchedFileHandler, so after logrotate moves the file
the next line goes to a fresh one; no copytruncate, no signal needed.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

LOG_NAME = "mssendmail.log"
_NEEDS_QUOTES = re.compile(r"[\s\"=]")


def kv(**fields: object) -> str:
    """Render fields as key=value; values with spaces are quoted, None is '-'."""
    parts = []
    for key, value in fields.items():
        text = "-" if value is None or value == "" else str(value)
        text = text.replace("\n", " ").replace("\r", " ")
        if _NEEDS_QUOTES.search(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ISOFormatter(logging.Formatter):
    """asctime as ISO 8601 with milliseconds and the UTC offset: 2026-12-01T23:50:39.123+00:00."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        import datetime

        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        return when.isoformat(timespec="milliseconds")


def setup(log_dir: str | None, verbose: bool = False) -> None:
    root = logging.getLogger("mssendmail")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    # journald stamps each line itself; anywhere else (a container, a shell,
    # OpenRC, nohup) the line must carry its own time.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    stderr.setFormatter(ISOFormatter(stamp + "%(levelname)s %(message)s"))
    root.addHandler(stderr)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(os.path.join(log_dir, LOG_NAME))
        handler.setFormatter(ISOFormatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
