"""README.md and docs/*.md: every relative link and #anchor resolves.

Anchors follow GitHub's rule for heading ids: lower-case, drop everything
but letters, digits, '_', '-' and spaces, turn each space into '-', and
number repeats (-1, -2, ...). Links inside code spans and fences are text,
not links, and are skipped.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FRONT_DOOR_LIMIT = 15 * 1024

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N", "M")
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path.read_text()):
        found.update(HTML_ID.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    found: list[str] = []
    for line in prose_lines(path.read_text()):
        found.extend(LINK.findall(CODE_SPAN.sub("", line)))
    return found


def test_slug_matches_github() -> None:
    assert slug("SMTP: `-bs` and mssendmail-smtpd") == "smtp--bs-and-mssendmail-smtpd"
    assert slug("4. Restrict the app to the mailboxes it may send as") == (
        "4-restrict-the-app-to-the-mailboxes-it-may-send-as"
    )
    assert slug("Troubleshooting by Graph error code") == "troubleshooting-by-graph-error-code"
    assert slug("Why mssendmail, and what it costs") == "why-mssendmail-and-what-it-costs"


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [bad](#nowhere) `[code](#x)`\n```\n[fenced](#y)\n```\n")
    assert links(page) == ["#top", "#nowhere"]
    assert anchors(page) == {"top"}


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: {dest} does not exist")
            continue
        if anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_docs_has_pages_and_readme_links_them() -> None:
    readme = (REPO / "README.md").read_text()
    pages = sorted((REPO / "docs").glob("*.md"))
    assert len(pages) >= 10
    index = (REPO / "docs" / "README.md").read_text()
    for page in pages:
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
            assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_readme_is_a_front_door() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size <= FRONT_DOOR_LIMIT, f"README.md is {size} bytes; move reference text to docs/"
