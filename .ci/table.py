"""Print the interpreter table of a CI run from the reports .ci/run and .ci/matrix left.

Usage: python3 .ci/table.py REPORT_DIR. Each run left LABEL.meta (label, python,
version, pytest exit code or "missing"/"venv") and, if pytest ran, LABEL.xml
(JUnit). Exit status 1 when any row is missing or red.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def order(label: str) -> tuple[int, int]:
    if label == "primary":
        return (0, 0)
    if label.startswith("py3."):
        return (1, int(label[4:]))
    return (2, 0)


def counts(xml: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped); errors count as failed."""
    root = ET.parse(xml).getroot()  # noqa: S314  # our own pytest wrote it
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


def main() -> int:
    reports = Path(sys.argv[1])
    rows = []
    red = False
    sums = [0, 0, 0]
    for meta in sorted(reports.glob("*.meta"), key=lambda p: order(p.stem)):
        label, python, version, rc = meta.read_text().rstrip("\n").split("\t")
        xml = reports / f"{label}.xml"
        if rc in ("missing", "venv") or not xml.exists():
            rows.append((label, python, version, "-", "-", "-", rc if rc != "0" else "no report"))
            red = True
            continue
        passed, failed, skipped = counts(xml)
        ok = rc == "0" and failed == 0 and passed > 0
        red = red or not ok
        sums = [sums[0] + passed, sums[1] + failed, sums[2] + skipped]
        result = "green" if ok else f"RED (pytest exit {rc})"
        rows.append((label, python, version, str(passed), str(failed), str(skipped), result))
    header = ("run", "interpreter", "version", "passed", "failed", "skipped", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if 3 <= i <= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        print("  ".join(cells).rstrip())
    print(f"total: {sums[0]} passed, {sums[1]} failed, {sums[2]} skipped")
    return 1 if red or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
