#!/usr/bin/env bash
# NAME
#   uninstall.sh - remove what install.sh installed
#
# SYNOPSIS
#   util/uninstall.sh [--purge] [--prefix DIR] [--bindir DIR] [--mandir DIR] [--root DIR]
#
# DESCRIPTION
#   Run as root. Stops and removes the systemd units, stops a worker started
#   by hand from the venv (SIGTERM: sends in flight finish), the sendmail/mailq links
#   (restoring an MTA that install.sh --force moved aside), the console-script
#   links, the venv, the man pages and the tmpfiles.d/sysusers.d/logrotate.d
#   snippets.
#   It keeps the spool (/var/lib/mssendmail, with any mail still queued), the
#   logs, /etc/mssendmail and the mssendmail user, unless --purge is given.
#   Safe to run more than once.
#
# OPTIONS
#   --purge        also delete the spool and every message in it, the logs,
#                  /etc/mssendmail (with its secrets) and the user and group
#   --prefix DIR   as given to install.sh (default /opt/mssendmail)
#   --bindir DIR   as given to install.sh (default /usr/local/bin)
#   --mandir DIR   as given to install.sh (default /usr/local/share/man)
#   --root DIR     as given to install.sh
#   -h, --help     this text
#
# EXIT STATUS
#   0 removed; 64 bad usage; 77 not root.
set -euo pipefail

PROG=uninstall.sh
SCRIPTS=(mssendmail mssendmail-worker mssendmail-queue mssendmail-smtpd)
MTA_LINKS=(/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases)
UNITS=(mssendmail-worker.service mssendmail-worker-once.service mssendmail-worker.timer
	mssendmail-worker.path mssendmail-smtpd.service mssendmail-smtpd.socket)
USER_NAME=mssendmail
ALT_NAME=sendmail
BACKUP_SUFFIX=.pre-mssendmail

PURGE=0
ROOT=""
PREFIX=""
BINDIR=""
MANDIR=""
PAGES=(man8/mssendmail.8 man8/mssendmail-worker.8 man8/mssendmail-queue.8 man8/mssendmail-smtpd.8
	man5/mssendmail.env.5 man5/mssendmail-spool.5)
MAN_ALIASES=(man8/sendmail.8 man1/mailq.1 man8/newaliases.8)
MAN_SO=".so man8/mssendmail.8"

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
	printf '%s: %s\n' "$PROG" "$2" >&2
	exit "$1"
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

parse_args() {
	while [ $# -gt 0 ]; do
		case $1 in
		--purge) PURGE=1 ;;
		--prefix | --bindir | --mandir | --root)
			[ $# -ge 2 ] || die 64 "$1 needs an argument; see --help"
			case $1 in
			--prefix) PREFIX=$2 ;;
			--bindir) BINDIR=$2 ;;
			--mandir) MANDIR=$2 ;;
			--root) ROOT=$2 ;;
			esac
			shift
			;;
		--prefix=*) PREFIX=${1#*=} ;;
		--bindir=*) BINDIR=${1#*=} ;;
		--mandir=*) MANDIR=${1#*=} ;;
		--root=*) ROOT=${1#*=} ;;
		-h | --help)
			usage
			exit 0
			;;
		*) die 64 "unknown argument $1; see --help" ;;
		esac
		shift
	done
	[ "$(id -u)" = 0 ] || die 77 "must run as root; try: sudo $0"
	if [ -n "$ROOT" ]; then
		[ -d "$ROOT" ] || die 64 "--root $ROOT is not a directory"
		ROOT=$(cd "$ROOT" && pwd)
		[ "$ROOT" != / ] || ROOT=""
	fi
	PREFIX=${PREFIX:-$ROOT/opt/mssendmail}
	BINDIR=${BINDIR:-$ROOT/usr/local/bin}
	MANDIR=${MANDIR:-$ROOT/usr/local/share/man}
	VENV=$PREFIX/venv
	VARLIB=$ROOT/var/lib/mssendmail
	LOGDIR=$ROOT/var/log/mssendmail
	ETC=$ROOT/etc/mssendmail
	UNITDIR=$ROOT/etc/systemd/system
}

remove_units() {
	if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
		systemctl disable --now "${UNITS[@]}" >/dev/null 2>&1 || true
	fi
	local unit removed=0
	for unit in "${UNITS[@]}"; do
		if [ -e "$UNITDIR/$unit" ]; then
			rm -f "$UNITDIR/$unit"
			removed=1
		fi
	done
	if [ "$removed" = 1 ]; then
		if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
		say "removed the systemd units"
	fi
}

is_ours() { # PATH: a link that ends at our venv's mssendmail (or dangles into it)
	[ -L "$1" ] || return 1
	local real
	real=$(readlink -f "$1" || readlink "$1")
	case $real in "$VENV"/bin/* | "$BINDIR"/mssendmail) return 0 ;; *) return 1 ;; esac
}

restore_mta() {
	local path
	if [ -z "$ROOT" ] && command -v update-alternatives >/dev/null &&
		update-alternatives --list "$ALT_NAME" 2>/dev/null | grep -qx "$BINDIR/mssendmail"; then
		update-alternatives --quiet --remove "$ALT_NAME" "$BINDIR/mssendmail"
		say "removed mssendmail from the $ALT_NAME alternatives"
	fi
	for path in "${MTA_LINKS[@]}"; do
		if is_ours "$ROOT$path"; then
			rm -f "$ROOT$path"
			say "removed $path"
		fi
		if [ -z "$ROOT" ] && command -v dpkg-divert >/dev/null &&
			[ "$(dpkg-divert --truename "$path")" = "$path$BACKUP_SUFFIX" ]; then
			dpkg-divert --local --rename --remove "$path" >/dev/null
			say "restored the original $path"
		elif [ -e "$ROOT$path$BACKUP_SUFFIX" ] || [ -L "$ROOT$path$BACKUP_SUFFIX" ]; then
			if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
				say "$path exists again; the old one stays at $path$BACKUP_SUFFIX"
			else
				mv "$ROOT$path$BACKUP_SUFFIX" "$ROOT$path"
				say "restored the original $path"
			fi
		fi
	done
}

stop_workers() { # a worker started by hand (no systemd) from this venv
	local dir pid cmd stopped=() _
	for dir in /proc/[0-9]*; do
		pid=${dir#/proc/}
		cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
		case $cmd in *"$VENV/bin/mssendmail-worker"* | *"$BINDIR/mssendmail-worker"*) ;; *) continue ;; esac
		[ "$pid" != "$$" ] || continue
		kill -TERM "$pid" 2>/dev/null && stopped+=("$pid")
	done
	[ ${#stopped[@]} -gt 0 ] || return 0
	# SIGTERM lets the sends in flight finish (up to GRAPH_TIMEOUT).
	for _ in $(seq 1 150); do
		for pid in "${stopped[@]}"; do
			# Gone, or a zombie its parent has not reaped yet: finished either way.
			[ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && break
			pid=""
		done
		[ -n "$pid" ] || break
		sleep 1
	done
	say "stopped mssendmail-worker (pid ${stopped[*]}) running from $VENV"
}

remove_program() {
	local name
	for name in "${SCRIPTS[@]}"; do
		if is_ours "$BINDIR/$name"; then rm -f "$BINDIR/$name"; fi
	done
	if [ -d "$VENV" ]; then
		rm -rf "$VENV"
		say "removed $VENV"
	fi
	rm -f "$PREFIX/README.md"
	local page
	for page in "${PAGES[@]}"; do rm -f "$MANDIR/$page"; done
	for page in "${MAN_ALIASES[@]}"; do # only our own .so links, never another MTA's page
		if [ -f "$MANDIR/$page" ] && [ "$(cat "$MANDIR/$page")" = "$MAN_SO" ]; then rm -f "$MANDIR/$page"; fi
	done
	rmdir "$MANDIR/man1" "$MANDIR/man5" "$MANDIR/man8" 2>/dev/null || true # only if now empty
	rmdir "$PREFIX" 2>/dev/null || true
	rm -f "$ROOT/etc/tmpfiles.d/mssendmail.conf" "$ROOT/etc/sysusers.d/mssendmail.conf" \
		"$ROOT/etc/logrotate.d/mssendmail"
}

count_mail() { # messages not yet delivered
	local dir n=0
	for dir in maildrop queue active deferred hold dead; do
		[ -d "$VARLIB/queue/$dir" ] || continue
		n=$((n + $(find "$VARLIB/queue/$dir" -maxdepth 1 -type f -regextype posix-extended \
			-regex '.*/[0-9a-f]{18}' | wc -l)))
	done
	echo "$n"
}

purge_or_keep() {
	local left
	left=$(count_mail)
	if [ "$PURGE" = 0 ]; then
		say "kept the spool $VARLIB ($left undelivered message(s)), $LOGDIR, $ETC and user $USER_NAME; --purge deletes them"
		return
	fi
	rm -rf "$VARLIB" "$LOGDIR" "$ETC"
	say "purged $VARLIB ($left undelivered message(s) deleted), $LOGDIR and $ETC"
	if [ -n "$ROOT" ]; then
		say "kept user $USER_NAME: with --root it belongs to this machine, not to $ROOT"
		return
	fi
	if getent passwd "$USER_NAME" >/dev/null; then
		userdel "$USER_NAME" 2>/dev/null || say "could not delete user $USER_NAME (still running processes?)"
	fi
	if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME" 2>/dev/null || true; fi
	getent passwd "$USER_NAME" >/dev/null || say "deleted user and group $USER_NAME"
}

main() {
	parse_args "$@"
	remove_units
	stop_workers
	restore_mta
	remove_program
	purge_or_keep
	say "done"
}

main "$@"
