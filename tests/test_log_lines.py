"""Every log line is one key=value line built by logs.kv (logs.py's one rule)."""

from __future__ import annotations

import ast
from pathlib import Path

from mssendmail import logs

PACKAGE = Path(logs.__file__).parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def free_text_log_calls(tree: ast.AST) -> list[int]:
    """Lines of `log.<level>(...)` calls whose message is not exactly one kv(...) call."""
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("log", "logger")
        ):
            continue
        ok = len(node.args) == 1 and isinstance(node.args[0], ast.Call)
        if ok:
            func = node.args[0].func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            ok = name == "kv"
        # A traceback is many lines: exc_info is not allowed either.
        ok = ok and not any(k.arg in ("exc_info", "stack_info") for k in node.keywords)
        if not ok or node.func.attr == "exception":
            found.append(node.lineno)
    return sorted(found)


def test_every_log_call_is_key_value() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line in free_text_log_calls(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == []


def test_the_scan_sees_free_text() -> None:
    code = (
        'log.info("queued %s", qid)\n'
        "log.error(kv(event='x'), exc_info=err)\n"
        "log.warning(kv(event='ok'))\n"
        "log.debug(logs.kv(event='ok'))\n"
        "log.info(f'{qid} sent')\n"
    )
    assert free_text_log_calls(ast.parse(code)) == [1, 2, 5]
