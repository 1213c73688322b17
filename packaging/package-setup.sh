#!/bin/sh
# NAME
#   package-setup - the work the .deb and .rpm maintainer scripts share
#
# SYNOPSIS
#   /usr/lib/mssendmail/package-setup user|venv|config|spool|drop-venv
#
# DESCRIPTION
#   Installed as /usr/lib/mssendmail/package-setup and run only by the
#   package's maintainer scripts (postinst, %pre/%post, prerm/%preun).
#   user       create the system user and group from sysusers.d; useradd or
#              adduser where systemd-sysusers is missing
#   venv       build the private venv /usr/lib/mssendmail/venv offline from
#              the wheelhouse in the package, on the first system python3
#              that meets the package's requires-python, then switch the
#              venv link to it in one rename and delete the previous one
#   config     give /etc/mssendmail and its .env their owner and mode
#   spool      create or repair the spool (mssendmail-queue init) and the
#              log directory
#   drop-venv  delete every venv this script built (package removal)
#
# EXIT STATUS
#   0 done; 1 a step failed (the message says which and what to do).
set -eu
umask 022 # every local user runs sendmail from the venv

LIB=/usr/lib/mssendmail
WHEELS=$LIB/wheels
VENV=$LIB/venv
ETC=/etc/mssendmail
ENVFILE=$ETC/.env
USER_NAME=mssendmail
SYSUSERS=/usr/lib/sysusers.d/mssendmail.conf
# pip and the admin's environment must not steer an offline install.
clean() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CONFIG_FILE=/dev/null LC_ALL=C.UTF-8 "$@"; }

die() {
	printf 'mssendmail: %s\n' "$*" >&2
	exit 1
}

make_user() {
	if getent passwd "$USER_NAME" >/dev/null; then return 0; fi
	if command -v systemd-sysusers >/dev/null 2>&1; then
		if [ -f "$SYSUSERS" ]; then
			systemd-sysusers "$SYSUSERS"
		else # rpm %pre: the file is not unpacked yet
			systemd-sysusers --replace="$SYSUSERS" - <<'EOF'
u mssendmail - "mssendmail delivery worker" /var/lib/mssendmail /usr/sbin/nologin
EOF
		fi
	elif command -v useradd >/dev/null 2>&1; then
		getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
		useradd --system --gid "$USER_NAME" --home-dir /var/lib/mssendmail --no-create-home \
			--shell /usr/sbin/nologin --comment "mssendmail delivery worker" "$USER_NAME"
	elif command -v adduser >/dev/null 2>&1; then
		adduser --quiet --system --group --home /var/lib/mssendmail --no-create-home \
			--shell /usr/sbin/nologin --gecos "mssendmail delivery worker" "$USER_NAME"
	fi
	getent passwd "$USER_NAME" >/dev/null ||
		die "could not create the system user $USER_NAME; create it (useradd --system $USER_NAME) and reinstall"
}

# The first system Python that meets requires-python (python-min, written at
# build time from pyproject.toml): python3 itself, then newer or older minor
# versions (RHEL 9's python3 is 3.9; its python3.11/python3.12 packages also do).
pick_python() {
	min=$(cat "$LIB/python-min")
	for py in /usr/bin/python3 /usr/bin/python3.14 /usr/bin/python3.13 /usr/bin/python3.12 \
		/usr/bin/python3.11 /usr/bin/python3.10 /usr/bin/python3.9; do
		[ -x "$py" ] || continue
		if "$py" -I -c 'import sys, venv; m = tuple(map(int, sys.argv[1].split("."))); sys.exit(sys.version_info[:2] < m)' "$min" 2>/dev/null; then
			echo "$py"
			return 0
		fi
	done
	die "no Python $min or newer with the venv module in /usr/bin; install python3 (>= $min) and run: dpkg-reconfigure mssendmail (or reinstall the rpm)"
}

make_venv() {
	py=$(pick_python)
	pip_whl=
	for whl in "$WHEELS"/pip-*.whl; do if [ -f "$whl" ]; then pip_whl=$whl; fi; done
	[ -n "$pip_whl" ] || die "the package's wheelhouse $WHEELS has no pip wheel; reinstall the package"
	new=$LIB/venv-$(date +%Y%m%d%H%M%S)-$$
	rm -rf "$new"
	# --without-pip: no ensurepip (Debian's python3-venv) and no pip left in
	# the venv; pip runs straight from its wheel, offline.
	clean "$py" -m venv --without-pip "$new" ||
		die "$py -m venv failed; see above"
	if ! clean "$new/bin/python" "$pip_whl/pip" install --quiet --no-index \
		--find-links "$WHEELS" --only-binary :all: --no-cache-dir --disable-pip-version-check \
		--no-warn-script-location mssendmail; then
		rm -rf "$new"
		die "installing the wheelhouse into $new failed; see pip's message above"
	fi
	# Same-directory symlink swapped by rename(2): a submitter starting now
	# sees the old venv or the new one, never half of one.
	ln -sfn "${new##*/}" "$LIB/venv.new"
	mv -Tf "$LIB/venv.new" "$VENV"
	for old in "$LIB"/venv-*; do
		[ "$old" = "$new" ] || rm -rf "$old"
	done
	echo "mssendmail: venv $VENV -> ${new##*/} on $("$py" -V 2>&1)"
}

fix_config() {
	install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
	if [ -f "$ENVFILE" ]; then
		chown root:"$USER_NAME" "$ENVFILE"
		chmod 0640 "$ENVFILE"
	fi
}

init_spool() {
	install -d -m 0755 -o root -g root /var/lib/mssendmail
	install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" /var/log/mssendmail
	out=$(clean /usr/bin/mssendmail-queue init --config "$ENVFILE" 2>&1) ||
		die "creating the spool failed: $out"
	[ -z "$out" ] || printf '%s\n' "$out"
}

case ${1:-} in
user) make_user ;;
venv) make_venv ;;
config) fix_config ;;
spool) init_spool ;;
drop-venv) rm -rf "$VENV" "$LIB/venv.new" "$LIB"/venv-* ;;
*) die "usage: package-setup user|venv|config|spool|drop-venv" ;;
esac
