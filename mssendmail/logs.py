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
_NEEDS_QUOTES = re.compile(r"[\s\"=\\\x00-\x1f\x7f-\x9f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def kv(**fields: object) -> str:
    """Render fields as key=value; None is '-'.

    A value with spaces, quotes, '=', backslashes or control characters is
    quoted, with backslash and quote escaped and every control character
    written as \\xNN: no value (a hostile file name, a header) can end the
    line or forge a field.
    """
    parts = []
    for key, value in fields.items():
        text = "-" if value is None or value == "" else str(value)
        if _NEEDS_QUOTES.search(text):
            text = text.replace("\\", "\\\\").replace('"', '\\"')
            text = '"' + _CONTROL.sub(_escape, text) + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup(log_dir: str | None, verbose: bool = False) -> None:
    root = logging.getLogger("mssendmail")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(stderr)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(os.path.join(log_dir, LOG_NAME))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
