#!/usr/bin/env bash
# NAME
#   install.sh - install mssendmail on this server, idempotently
#
# SYNOPSIS
#   util/install.sh [--force] [--prefix DIR] [--bindir DIR] [--mandir DIR]
#                   [--mode service|timer] [--no-systemd] [--root DIR] [SOURCE]
#
# DESCRIPTION
#   Run as root. Safe to run again: to upgrade, or to repair what it set up.
#   1. creates the system user and group mssendmail (systemd-sysusers when
#      present, else useradd --system);
#   2. installs SOURCE (this checkout by default, or a directory or wheel) into
#      the venv PREFIX/venv (default /opt/mssendmail/venv) and links the
#      console scripts into BINDIR (default /usr/local/bin). The venv's
#      Python is $PYTHON if set, else /usr/bin/python3, else the first python3
#      on PATH, whichever is 3.9 or newer with venv; it says which and why,
#      and refuses an older one in one line (exit 69);
#   3. creates /etc/mssendmail/.env from the commented template, mode 0640
#      root:mssendmail, and never overwrites an existing one;
#   4. creates the spool /var/lib/mssendmail/queue with its modes
#      (`mssendmail-queue init`) and the log directory /var/log/mssendmail;
#   5. points /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq and
#      /usr/bin/newaliases (a no-op that exits 0) at
#      mssendmail, through update-alternatives where it exists. An existing
#      MTA is left alone unless --force, which diverts it (dpkg-divert, or a
#      rename to NAME.pre-mssendmail); uninstall.sh puts it back;
#   6. installs the man pages (man/build) into MANDIR (default
#      /usr/local/share/man), plus sendmail(8), mailq(1) and newaliases(8)
#      pointing at mssendmail(8) once /usr/sbin/sendmail is mssendmail;
#   7. installs the tmpfiles.d, sysusers.d and logrotate.d snippets and the
#      systemd units, and enables the worker when systemd is running
#      (otherwise it prints what to enable).
#
# OPTIONS
#   --force        replace an existing sendmail/mailq (diverted, not deleted)
#                  and existing files in BINDIR
#   --prefix DIR   install root of the venv (default /opt/mssendmail)
#   --bindir DIR   where mssendmail, mssendmail-worker, mssendmail-queue and
#                  mssendmail-smtpd are linked (default /usr/local/bin)
#   --mandir DIR   where the man pages go (default /usr/local/share/man)
#   --mode MODE    service (default): long-running mssendmail-worker.service;
#                  timer: mssendmail-worker.timer + .path run a oneshot
#   --no-systemd   do not install or enable the systemd units
#   --root DIR     install into DIR instead of / (tests, images): every path
#                  above is under DIR, the links are plain symlinks, the
#                  system's sendmail and systemd are not touched. The user is
#                  still created on this machine, since the worker runs as it.
#   -h, --help     this text
#
# SECURITY
#   The venv is root-owned and world-readable (every user runs sendmail from
#   it). The secrets live only in /etc/mssendmail/.env (0640 root:mssendmail).
#
# EXIT STATUS
#   0 installed (warnings, e.g. an MTA left in place, are printed); 64 bad
#   usage; 69 a required tool is missing; 77 not root; 1 a step failed.
#
# FILES
#   /opt/mssendmail/venv, /usr/local/bin/mssendmail*, /etc/mssendmail/.env,
#   /usr/local/share/man/man[58]/mssendmail*,
#   /var/lib/mssendmail/queue, /var/log/mssendmail, /etc/systemd/system/
#   mssendmail-worker*, /etc/{tmpfiles.d,sysusers.d,logrotate.d}/mssendmail*
set -euo pipefail
umask 022 # the venv must be readable by every local user who submits mail

PROG=install.sh
UTIL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPTS=(mssendmail mssendmail-worker mssendmail-queue mssendmail-smtpd)
# newaliases: Debian maintainer scripts run it; ours exits 0 (the worker
# re-reads ALIASES whenever the file changes, so there is nothing to build).
MTA_LINKS=(/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases)
UNITS=(mssendmail-worker.service mssendmail-worker-once.service mssendmail-worker.timer
	mssendmail-worker.path)
OPTIONAL_UNITS=(mssendmail-smtpd.service mssendmail-smtpd.socket) # installed, never enabled
USER_NAME=mssendmail
ALT_NAME=sendmail
ALT_PRIORITY=50
BACKUP_SUFFIX=.pre-mssendmail
PY_NEW_ENOUGH='import sys; sys.exit(sys.version_info < (3, 9))'
PY_HAS_VENV='import venv, ensurepip'

FORCE=0
SYSTEMD=1
MODE=service
ROOT=""
PREFIX=""
BINDIR=""
MANDIR=""
SOURCE=""
WARNINGS=()

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() {
	printf '%s: warning: %s\n' "$PROG" "$*" >&2
	WARNINGS+=("$*")
}
die() { # die CODE MESSAGE
	printf '%s: %s\n' "$PROG" "$2" >&2
	exit "$1"
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

parse_args() {
	while [ $# -gt 0 ]; do
		case $1 in
		--force) FORCE=1 ;;
		--no-systemd) SYSTEMD=0 ;;
		--prefix | --bindir | --mandir | --mode | --root)
			[ $# -ge 2 ] || die 64 "$1 needs an argument; see --help"
			case $1 in
			--prefix) PREFIX=$2 ;;
			--bindir) BINDIR=$2 ;;
			--mandir) MANDIR=$2 ;;
			--mode) MODE=$2 ;;
			--root) ROOT=$2 ;;
			esac
			shift
			;;
		--prefix=* | --bindir=* | --mandir=* | --mode=* | --root=*)
			local value=${1#*=}
			case $1 in
			--prefix=*) PREFIX=$value ;;
			--bindir=*) BINDIR=$value ;;
			--mandir=*) MANDIR=$value ;;
			--mode=*) MODE=$value ;;
			--root=*) ROOT=$value ;;
			esac
			;;
		-h | --help)
			usage
			exit 0
			;;
		-*) die 64 "unknown option $1; see --help" ;;
		*)
			[ -z "$SOURCE" ] || die 64 "only one SOURCE may be given; see --help"
			SOURCE=$1
			;;
		esac
		shift
	done
	case $MODE in service | timer) ;; *) die 64 "--mode must be service or timer" ;; esac
	[ "$(id -u)" = 0 ] || die 77 "must run as root; try: sudo $0"
	if [ -n "$ROOT" ]; then
		mkdir -p "$ROOT"
		ROOT=$(cd "$ROOT" && pwd)
		[ "$ROOT" != / ] || ROOT=""
	fi
	PREFIX=${PREFIX:-$ROOT/opt/mssendmail}
	BINDIR=${BINDIR:-$ROOT/usr/local/bin}
	MANDIR=${MANDIR:-$ROOT/usr/local/share/man}
	SOURCE=${SOURCE:-$(dirname "$UTIL_DIR")}
	VENV=$PREFIX/venv
	ETC=$ROOT/etc/mssendmail
	ENVFILE=$ETC/.env
	VARLIB=$ROOT/var/lib/mssendmail
	LOGDIR=$ROOT/var/log/mssendmail
	UNITDIR=$ROOT/etc/systemd/system
}

python_usable() { # python_usable PATH: Python 3.9+ with venv
	"$1" -c "$PY_NEW_ENOUGH" 2>/dev/null && "$1" -c "$PY_HAS_VENV" 2>/dev/null
}

preflight() {
	local why="PYTHON=${PYTHON:-} was given" candidate
	if [ -z "${PYTHON:-}" ]; then
		# The system's Python first: one under /root (pyenv, uv) or a home
		# directory cannot be run by the users who submit mail.
		why="the distribution's python3, which every user can run"
		for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
			if [ -x "$candidate" ] && python_usable "$candidate"; then
				PYTHON=$candidate
				break
			fi
			why="the first python3 on PATH: /usr/bin/python3 is missing, older than 3.9 or lacks venv"
		done
		[ -n "${PYTHON:-}" ] || die 69 "no Python 3.9 or newer with venv found; apt-get install python3 python3-venv (dnf install python3), or set PYTHON=/path/to/python3"
	fi
	command -v "$PYTHON" >/dev/null || die 69 "PYTHON=$PYTHON not found"
	"$PYTHON" -c "$PY_NEW_ENOUGH" ||
		die 69 "$("$PYTHON" -V 2>&1) at $PYTHON is too old: mssendmail needs Python 3.9 or newer; set PYTHON=/path/to/python3.9+"
	"$PYTHON" -c "$PY_HAS_VENV" 2>/dev/null ||
		die 69 "$("$PYTHON" -V 2>&1) at $PYTHON lacks the venv module; apt-get install python3-venv, or set PYTHON=/path/to/python3"
	say "using $("$PYTHON" -V 2>&1) at $PYTHON: $why"
	[ -e "$SOURCE" ] || die 64 "SOURCE $SOURCE does not exist; give a checkout directory or a wheel"
}

create_user() {
	if getent passwd "$USER_NAME" >/dev/null; then
		reuse_user
		return
	fi
	if command -v systemd-sysusers >/dev/null; then
		systemd-sysusers "$UTIL_DIR/sysusers.d/mssendmail.conf"
	else
		getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
		useradd --system --gid "$USER_NAME" --home-dir /var/lib/mssendmail --no-create-home \
			--shell /usr/sbin/nologin --comment "mssendmail delivery worker" "$USER_NAME"
	fi
	getent passwd "$USER_NAME" >/dev/null || die 1 "could not create user $USER_NAME; create it by hand (useradd --system $USER_NAME) and run again"
	say "created system user and group $USER_NAME"
}

reuse_user() { # an existing mssendmail user (an earlier install, or made by hand)
	local home uid
	home=$(getent passwd "$USER_NAME" | cut -d: -f6)
	uid=$(id -u "$USER_NAME")
	getent group "$USER_NAME" >/dev/null ||
		warn "user $USER_NAME exists but group $USER_NAME does not; create it (groupadd --system $USER_NAME) and run again"
	# A service account needs no home of its own under /home (useradd without
	# --system made one there): point it at the spool's parent, as sysusers does.
	case $home in
	/home/*)
		if usermod --home /var/lib/mssendmail "$USER_NAME" 2>/dev/null; then
			say "user $USER_NAME exists; moved its home from $home to /var/lib/mssendmail (left $home in place)"
		else
			warn "user $USER_NAME has its home in $home; change it with: usermod --home /var/lib/mssendmail $USER_NAME"
		fi
		;;
	*) say "user $USER_NAME exists (uid $uid, home $home); reused" ;;
	esac
	[ "$uid" -lt 1000 ] ||
		warn "user $USER_NAME (uid $uid) is not a system user; that works, but a system account (useradd --system) is usual"
}

usable_by_everyone() { # can an unprivileged user start the venv's Python?
	command -v setpriv >/dev/null || return 0 # cannot tell; assume yes
	setpriv --reuid=nobody --regid="$(id -gn nobody 2>/dev/null || echo 65534)" --clear-groups \
		env -i "$VENV/bin/python" -c pass 2>/dev/null
}

install_venv() {
	if [ -x "$VENV/bin/python" ] && ! usable_by_everyone; then
		say "removing $VENV: its Python ($(readlink -f "$VENV/bin/python")) cannot be run by other users"
		rm -rf "$VENV"
	fi
	if [ ! -x "$VENV/bin/python" ]; then
		mkdir -p "$PREFIX"
		"$PYTHON" -m venv "$VENV" ||
			die 69 "cannot create a venv in $VENV; on Debian: apt-get install python3-venv"
		say "created venv $VENV with $PYTHON"
	fi
	usable_by_everyone ||
		die 69 "$VENV/bin/python -> $(readlink -f "$VENV/bin/python") cannot be run by other users, so they could not submit mail; rerun with PYTHON=/usr/bin/python3"
	# A current pip writes console-script wrappers that do not import `re`:
	# ~10 ms less for every mail submitted. Best effort: an old pip still works.
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip ||
		say "could not upgrade pip in $VENV; submission will be ~10 ms slower"
	# Reinstall the package itself every time (an upgrade may keep the version
	# number); its dependencies only when missing or too old.
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "$SOURCE" ||
		die 1 "pip could not install $SOURCE into $VENV; see the pip output above"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$SOURCE" ||
		die 1 "pip could not reinstall $SOURCE into $VENV"
	[ ! -f "$(dirname "$UTIL_DIR")/README.md" ] || install -m 0644 "$(dirname "$UTIL_DIR")/README.md" "$PREFIX/README.md"
	say "installed $("$VENV/bin/pip" list --disable-pip-version-check 2>/dev/null | awk '$1 == "mssendmail" {print $1 " " $2}') into $VENV"
}

link_scripts() {
	mkdir -p "$BINDIR"
	local name
	for name in "${SCRIPTS[@]}"; do
		[ -e "$VENV/bin/$name" ] || continue
		if [ -e "$BINDIR/$name" ] && [ ! -L "$BINDIR/$name" ] && [ "$FORCE" = 0 ]; then
			warn "$BINDIR/$name exists and is not a link; left alone (use --force to replace it)"
			continue
		fi
		ln -sfn "$VENV/bin/$name" "$BINDIR/$name"
	done
	say "linked ${SCRIPTS[*]} into $BINDIR"
}

install_config() {
	install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
	install -m 0644 -o root -g root "$UTIL_DIR/mssendmail.env.example" "$ETC/mssendmail.env.example"
	if [ ! -e "$ENVFILE" ]; then
		local tmp
		tmp=$(mktemp "$ETC/.env.XXXXXX")
		cat "$UTIL_DIR/mssendmail.env.example" >"$tmp"
		if [ -n "$ROOT" ]; then
			printf '\n# Set by install.sh --root %s\nQUEUE_DIR=%s\n' "$ROOT" "$VARLIB/queue" >>"$tmp"
		fi
		chown root:"$USER_NAME" "$tmp"
		chmod 0640 "$tmp"
		mv "$tmp" "$ENVFILE" # atomic: never a half-written config
		say "created $ENVFILE (0640 root:$USER_NAME); edit it to add your tenant and app"
		NEW_CONFIG=1
	else
		NEW_CONFIG=0
		say "kept existing $ENVFILE"
	fi
	# The file holds secrets: whatever happened to it, only root and the
	# worker's group may read it.
	if [ "$(stat -c '%a %U %G' "$ENVFILE")" != "640 root $USER_NAME" ]; then
		chown root:"$USER_NAME" "$ENVFILE"
		chmod 0640 "$ENVFILE"
		say "reset $ENVFILE to 0640 root:$USER_NAME"
	fi
}

queue_dir() { # the spool the config names (an admin may have moved it)
	env -i PATH=/usr/bin:/bin "$VENV/bin/python" -c \
		'import sys; from mssendmail import config; print(config.load(sys.argv[1]).queue_dir)' "$ENVFILE"
}

init_spool() {
	install -d -m 0755 -o root -g root "$VARLIB"
	install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$LOGDIR"
	local out
	if env -i PATH=/usr/bin:/bin "$VENV/bin/python" -c 'import mssendmail.admin.cli' 2>/dev/null &&
		out=$(env -i PATH=/usr/bin:/bin "$VENV/bin/mssendmail-queue" init --config "$ENVFILE" 2>&1); then
		:
	else
		# mssendmail-queue is not there yet: the same layout straight from the
		# module that defines it.
		out=$(env -i PATH=/usr/bin:/bin "$VENV/bin/python" -c '
import sys
from mssendmail import config, spool
for line in spool.init_tree(config.load(sys.argv[1]).queue_dir):
    print(line)
' "$ENVFILE" 2>&1) || die 1 "cannot create the spool: $out"
	fi
	[ -z "$out" ] || printf '%s\n' "$out"
	local qdir
	qdir=$(queue_dir)
	say "spool ready at $qdir"
	case $qdir in "$VARLIB"/*) ;; *) warn "QUEUE_DIR=$qdir is outside $VARLIB: adjust ReadWritePaths= and the .path unit with 'systemctl edit'" ;; esac
}

install_snippets() {
	install -D -m 0644 "$UTIL_DIR/tmpfiles.d/mssendmail.conf" "$ROOT/etc/tmpfiles.d/mssendmail.conf"
	install -D -m 0644 "$UTIL_DIR/sysusers.d/mssendmail.conf" "$ROOT/etc/sysusers.d/mssendmail.conf"
	install -D -m 0644 "$UTIL_DIR/logrotate.d/mssendmail" "$ROOT/etc/logrotate.d/mssendmail"
	say "installed tmpfiles.d, sysusers.d and logrotate.d snippets"
}

install_man() {
	local built page
	built=$(dirname "$UTIL_DIR")/man/build
	if ! compgen -G "$built/*.[0-9]" >/dev/null; then
		warn "no man pages in $built (run util/build-man.sh); none installed"
		return
	fi
	for page in "$built"/*.[0-9]; do
		install -D -m 0644 "$page" "$MANDIR/man${page##*.}/$(basename "$page")"
	done
	say "installed the man pages into $MANDIR (man mssendmail, man mssendmail-queue, ...)"
}

# Once /usr/sbin/sendmail is ours, `man sendmail` (and mailq, newaliases)
# should describe it too; another MTA's own page is left alone.
MAN_ALIASES=(man8/sendmail.8 man1/mailq.1 man8/newaliases.8)
MAN_SO=".so man8/mssendmail.8"

alias_man() {
	resolves_to_us "$ROOT/usr/sbin/sendmail" && [ -f "$MANDIR/man8/mssendmail.8" ] || return 0
	local alias
	for alias in "${MAN_ALIASES[@]}"; do
		if [ -e "$MANDIR/$alias" ] && [ "$(cat "$MANDIR/$alias")" != "$MAN_SO" ]; then
			continue
		fi
		mkdir -p "$(dirname "$MANDIR/$alias")"
		printf '%s\n' "$MAN_SO" >"$MANDIR/$alias"
		chmod 0644 "$MANDIR/$alias"
	done
	say "man sendmail, man mailq and man newaliases show mssendmail(8)"
}

resolves_to_us() { # PATH: does it (through any links) end at our mssendmail?
	[ -e "$1" ] && [ "$(readlink -f "$1")" = "$(readlink -f "$VENV/bin/mssendmail")" ]
}

use_alternatives() { [ -z "$ROOT" ] && command -v update-alternatives >/dev/null; }

set_aside() { # PATH (absolute, without ROOT): divert another MTA's file
	local path=$1
	if [ -z "$ROOT" ] && command -v dpkg-divert >/dev/null; then
		dpkg-divert --local --rename --divert "$path$BACKUP_SUFFIX" --add "$path" >/dev/null
	else
		[ ! -e "$ROOT$path$BACKUP_SUFFIX" ] ||
			die 1 "both $ROOT$path and $ROOT$path$BACKUP_SUFFIX exist; move one away and run again"
		mv "$ROOT$path" "$ROOT$path$BACKUP_SUFFIX"
	fi
	say "moved the existing $path aside to $path$BACKUP_SUFFIX"
}

link_mta() {
	local path full foreign=() target
	for path in "${MTA_LINKS[@]}"; do
		full=$ROOT$path
		if [ -e "$full" ] || [ -L "$full" ]; then
			resolves_to_us "$full" || foreign+=("$path")
		fi
	done
	if [ ${#foreign[@]} -gt 0 ] && [ "$FORCE" = 0 ]; then
		for path in "${foreign[@]}"; do
			warn "$path belongs to another MTA (-> $(readlink -f "$ROOT$path")); left alone, so it is NOT mssendmail. Run again with --force to divert it (uninstall.sh restores it)"
		done
		return
	fi
	for path in "${foreign[@]}"; do
		# An update-alternatives link stays: ours joins that group below.
		case $(readlink "$ROOT$path" || true) in /etc/alternatives/*) use_alternatives && continue ;; esac
		set_aside "$path"
	done
	target=$BINDIR/mssendmail
	if use_alternatives; then
		update-alternatives --quiet --install /usr/sbin/sendmail "$ALT_NAME" "$target" "$ALT_PRIORITY" \
			--slave /usr/lib/sendmail "$ALT_NAME-lib" "$target" \
			--slave /usr/bin/mailq "$ALT_NAME-mailq" "$target" \
			--slave /usr/bin/newaliases "$ALT_NAME-newaliases" "$target"
		[ "$FORCE" = 0 ] || update-alternatives --quiet --set "$ALT_NAME" "$target"
		say "linked ${MTA_LINKS[*]} to $target with update-alternatives ($ALT_NAME)"
	else
		for path in "${MTA_LINKS[@]}"; do
			mkdir -p "$(dirname "$ROOT$path")"
			ln -sfn "$target" "$ROOT$path"
		done
		say "linked ${MTA_LINKS[*]} to $target"
	fi
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

install_units() {
	mkdir -p "$UNITDIR"
	local unit installed=()
	for unit in "${UNITS[@]}" "${OPTIONAL_UNITS[@]}"; do
		[ -e "$UTIL_DIR/$unit" ] || continue
		installed+=("$unit")
		# Rewrite the default paths to where this install put things.
		sed -e "s#/usr/local/bin/#$BINDIR/#g" \
			-e "s#/opt/mssendmail/#$PREFIX/#g" \
			-e "s#/var/lib/mssendmail#$VARLIB#g" \
			-e "s#/var/log/mssendmail#$LOGDIR#g" \
			"$UTIL_DIR/$unit" >"$UNITDIR/$unit.tmp"
		chmod 0644 "$UNITDIR/$unit.tmp"
		mv "$UNITDIR/$unit.tmp" "$UNITDIR/$unit"
	done
	say "installed ${installed[*]} into $UNITDIR"
	local enable=(mssendmail-worker.service) disable=(mssendmail-worker.timer mssendmail-worker.path)
	if [ "$MODE" = timer ]; then
		enable=(mssendmail-worker.timer mssendmail-worker.path)
		disable=(mssendmail-worker.service)
	fi
	if ! systemd_running; then
		say "systemd is not running here; once it is (or to start by hand):"
		say "  systemctl daemon-reload && systemctl enable --now ${enable[*]}"
		say "  without systemd: run '$BINDIR/mssendmail-worker' as user $USER_NAME (e.g. runuser -u $USER_NAME -- $BINDIR/mssendmail-worker)"
		return
	fi
	systemctl daemon-reload
	systemctl disable --now "${disable[@]}" >/dev/null 2>&1 || true
	systemctl enable "${enable[@]}"
	if [ "$NEW_CONFIG" = 1 ]; then
		say "enabled ${enable[*]}; start it after editing $ENVFILE: systemctl start ${enable[*]}"
	else
		systemctl restart "${enable[@]}" || warn "could not start ${enable[*]}; see: journalctl -u mssendmail-worker*"
		say "enabled and (re)started ${enable[*]}"
	fi
}

main() {
	parse_args "$@"
	preflight
	create_user
	install_venv
	link_scripts
	install_config
	init_spool
	install_snippets
	link_mta
	install_man
	alias_man
	if [ "$SYSTEMD" = 1 ]; then install_units; fi
	say "done. Next: edit $ENVFILE, start the worker (see above), then run '$BINDIR/mssendmail-queue check' and '$BINDIR/mssendmail-queue test you@example.com --wait'"
	if [ ${#WARNINGS[@]} -gt 0 ]; then
		say "finished with ${#WARNINGS[@]} warning(s):"
		printf '  %s\n' "${WARNINGS[@]}"
	fi
}

main "$@"
