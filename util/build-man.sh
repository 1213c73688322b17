#!/bin/bash
# Build the man pages: man/NAME.SECTION.md -> man/build/NAME.SECTION (roff).
#
#   util/build-man.sh [OUTDIR]      (default: man/build)
#
# The sources are pandoc Markdown. util/man-include.py first pastes in the
# tables they share with docs/ (the flag table, the config keys, the spool
# modes, ...), so each is written once; pandoc then writes the roff. The
# built pages are committed, so install.sh and the packages need no pandoc;
# tests/test_man.py fails when they are older than their sources, and checks
# them against the flag table, config.py and the argparse parsers.
#
# Exit: 0 built; 69 (EX_UNAVAILABLE) pandoc or python3 is missing.
set -euo pipefail

PROG=build-man.sh
UTIL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$UTIL_DIR")
OUT=${1:-$REPO/man/build}

for tool in pandoc python3; do
	if ! command -v "$tool" >/dev/null; then
		printf '%s: %s is not installed; apt-get install %s (the built pages in man/build are committed)\n' \
			"$PROG" "$tool" "$tool" >&2
		exit 69
	fi
done

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/mssendmail/__init__.py")
mkdir -p "$OUT"
for src in "$REPO"/man/*.md; do
	page=$(basename "$src" .md) # mssendmail-queue.8
	python3 "$UTIL_DIR/man-include.py" "$src" |
		pandoc --standalone --from markdown-smart-tex_math_dollars --to man \
			--metadata footer="mssendmail $version" --output "$OUT/$page.tmp"
	mv "$OUT/$page.tmp" "$OUT/$page"
done
printf '%s: built %s\n' "$PROG" "$(cd "$OUT" && echo *.[0-9])"
