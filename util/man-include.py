#!/usr/bin/env python3
"""Expand the include directives of a man page source (man/*.md) for pandoc.

    <!-- include ../docs/configuration.md config-keys term="`{0}`" text="Default: {1}. {2}" -->

is replaced by the text between ``<!-- section: config-keys -->`` and
``<!-- /section: config-keys -->`` of that file (relative to the source), so
a table that docs/ and a man page share is written once. Pipe tables become
definition lists, which read better in a terminal than tbl tables: ``term``
and ``text`` are format strings over the row's cells ({0}, {1}, ...). Every
row is kept, so a page cannot silently drop a key or a flag. A link to a guide
that a man page covers becomes a reference to that page (smtp.md is
mssendmail-smtpd(8)); other repository links keep only their text; web
links stay for pandoc to render.

Standard library only: util/build-man.sh runs it with any python3.
Usage: man-include.py SOURCE.md > expanded.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DIRECTIVE = re.compile(r"^<!-- include (\S+) (\S+)((?: \w+=\"[^\"]*\")*) -->$", re.M)
ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")
MARKER = re.compile(r"^<!-- /?section: [\w-]+ -->\n?", re.M)
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?![a-z][a-z0-9+.-]*:)([^)#]*)[^)]*\)")
# A link to the guide a man page covers becomes a reference to that page.
PAGE_OF = {
    "submission.md": "**mssendmail**(8)",
    "delivery.md": "**mssendmail-worker**(8)",
    "operations.md": "**mssendmail-queue**(8)",
    "smtp.md": "**mssendmail-smtpd**(8)",
    "configuration.md": "**mssendmail.env**(5)",
    "spool.md": "**mssendmail-spool**(5)",
}


def unlink(match: re.Match[str]) -> str:
    return PAGE_OF.get(Path(match.group(2)).name, match.group(1))


def section(path: Path, name: str) -> str:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"<!-- section: {name} -->\n(.*?)<!-- /section: {name} -->", text, re.S)
    if match is None:
        raise SystemExit(f"man-include: {path}: no section {name}")
    return match.group(1)


def cells(line: str) -> list[str]:
    """The cells of a pipe-table row; '\\|' is a literal bar."""
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [part.strip().replace("\\|", "|") for part in parts]


def deflist(text: str, term: str, body: str) -> str:
    """Each pipe table in text as a pandoc definition list."""
    out: list[str] = []
    rows: list[str] = []

    def flush() -> None:
        if not rows:
            return
        for row in rows[2:]:  # header and separator
            values = cells(row)
            out.append(term.format(*values))
            out.append(":   " + body.format(*values))
            out.append("")
        rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out) + "\n"


def expand(source: Path) -> str:
    text = source.read_text(encoding="utf-8")

    def replace(match: re.Match[str]) -> str:
        attrs = dict(ATTR.findall(match.group(3)))
        body = section((source.parent / match.group(1)), match.group(2))
        body = MARKER.sub("", body)
        if "term" in attrs:
            body = deflist(body, attrs["term"], attrs.get("text", "{1}"))
        return RELATIVE_LINK.sub(unlink, body).strip("\n")

    return DIRECTIVE.sub(replace, text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: man-include.py SOURCE.md")
    sys.stdout.write(expand(Path(sys.argv[1])))
