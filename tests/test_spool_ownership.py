"""spool/ owns the layout: code outside it never renames, links, unlinks or touches a spool path.

The scan walks the package's AST and reports, per (module, function), every call of
os.rename / os.link / os.unlink / os.remove / os.replace / os.utime, of the spool's
own unlink_quiet, and every os.path.join onto a spool directory (``x.dir(...)``).
Outside mssendmail/spool/ such a call fails the test unless ALLOWED names it with
a reason (only OUTBOX_DIR, which is not a spool path). The test fails too when
an allowed entry no longer offends, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mssendmail

PACKAGE = Path(mssendmail.__file__).parent
FILE_OPS = {"rename", "link", "unlink", "remove", "replace", "utime", "unlink_quiet"}

ALLOWED: dict[str, str] = {
    # Not the spool: OUTBOX_DIR, the file transport's own directory.
    "transport.py:FileTransport.send": "OUTBOX_DIR is not a spool path",
}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _is_os_call(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id == "os" and func.attr in FILE_OPS
    return isinstance(func, ast.Name) and func.id == "unlink_quiet"


def _joins_a_spool_dir(call: ast.Call) -> bool:
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "join" and call.args):
        return False
    first = call.args[0]
    return isinstance(first, ast.Call) and _name(first.func) == "dir"


def offending_functions(source: str) -> set[str]:
    """Qualified names (Class.method or function) that touch spool paths directly."""
    found: set[str] = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and (_is_os_call(child) or _joins_a_spool_dir(child)):
                found.add(".".join(scope) or "<module>")
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def scan() -> set[str]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("spool/"):
            continue
        found |= {f"{rel}:{name}" for name in offending_functions(path.read_text())}
    return found


def test_only_spool_touches_spool_paths() -> None:
    found = scan()
    assert found - set(ALLOWED) == set(), "use a Spool verb (mssendmail/spool/) instead"


def test_the_allowed_list_only_shrinks() -> None:
    gone = set(ALLOWED) - scan()
    assert gone == set(), "no longer offends: remove it from ALLOWED"


def test_the_scan_sees_each_kind_of_call() -> None:
    code = (
        "import os\n"
        "def a(spool):\n    os.rename(spool.path('queue', 'x'), spool.path('dead', 'x'))\n"
        "class W:\n    def b(self):\n        os.utime(self.spool.path('deferred', 'x'), (1, 1))\n"
        "def c(spool):\n    return os.path.join(spool.dir('sent'), 'x')\n"
        "def d(path):\n    unlink_quiet(path)\n"
        "def e(spool):\n    spool.set_due('x', 1.0)\n"
    )
    assert offending_functions(code) == {"a", "W.b", "c", "d"}
