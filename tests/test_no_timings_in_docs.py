"""Docstrings and comments say why, not how fast: figures go stale, bench/RESULTS.md is re-run.

A docstring may point there ("see bench/RESULTS.md, Submission"); it may not quote
a timing or a throughput itself.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import mssendmail

PACKAGE = Path(mssendmail.__file__).parent
FIGURE = re.compile(r"\d(?:[\d.,]*\d)?\s?(?:ms|µs|us|msgs?/s|MiB/s|MB/s)\b")


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring in a module."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found.append((tok.start[0], tok.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                found.append((node.body[0].lineno, doc))
    return found


def figures(source: str) -> list[int]:
    return sorted({line for line, text in prose(source) if FIGURE.search(text)})


def test_no_timing_figures_in_docstrings_or_comments() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line in figures(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == [], "move the figures to bench/RESULTS.md and point there"


def test_the_scan_sees_a_figure() -> None:
    code = (
        '"""Fast: ~18 ms."""\n'
        "x = 1  # 240 msg/s here\n"
        "def f() -> str:\n"
        '    """Why, not how fast."""\n'
        '    return f"acquired in {3} ms"  # a message, not prose\n'
    )
    assert figures(code) == [1, 2]
