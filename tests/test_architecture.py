"""docs/architecture.md must match the code: its module list and the functions it names."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import mssendmail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")
PACKAGE = os.path.dirname(os.path.abspath(mssendmail.__file__))


def section(title: str) -> str:
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def package_modules() -> set[str]:
    found = set()
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))
                found.add(rel.replace(os.sep, "/"))
    return found


def test_module_list_matches_the_package() -> None:
    listed = set(re.findall(r"`(mssendmail/[\w/]+\.py)`", section("Modules")))
    found = package_modules()
    assert found - listed == set(), "modules missing from docs/architecture.md, ## Modules"
    assert listed - found == set(), "docs/architecture.md lists modules that do not exist"


def test_init_files_stay_small() -> None:
    """The rooms' __init__.py files are empty: importing a room costs nothing."""
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if root != PACKAGE and "__init__.py" in files:
            assert os.path.getsize(os.path.join(root, "__init__.py")) == 0, root


def _attr_chain(obj: Any, names: list[str]) -> bool:
    for name in names:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _resolve(dotted: str) -> bool:
    """True if `dotted` names something in the package.

    `a.b.f` may be written from its room (`spool.layout.Spool.wake`), from its module
    (`pickup.ingest`) or from a class of any module (`Worker.wait`).
    """
    parts = dotted.split(".")
    for rel in sorted(package_modules()):
        name = rel[: -len(".py")].replace("/", ".")
        module = importlib.import_module(name)
        room_path = name.split(".")[1:]  # e.g. ["delivery", "pickup"]
        for k in range(len(parts), -1, -1):
            prefix = parts[:k]
            if k and room_path[-k:] != prefix:
                continue
            if _attr_chain(module, parts[k:]):
                return True
    return False


def test_functions_named_in_the_life_of_a_message_exist() -> None:
    names = re.findall(r"`([A-Za-z_]\w*(?:\.\w+)+)`", section("The life of a message"))
    assert len(names) >= 20, names  # the section names a function at each step
    missing = [name for name in names if not _resolve(name)]
    assert missing == []
