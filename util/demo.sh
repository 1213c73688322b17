#!/usr/bin/env bash
# NAME
#   demo.sh - the whole mssendmail pipeline on this machine, with no tenant
#
# SYNOPSIS
#   bash util/demo.sh
#
# DESCRIPTION
#   Needs only python3 (3.9+) with venv. Creates ./.venv with the project
#   installed if it is not there yet, writes a config for the file transport
#   (TRANSPORT=file) to ./demo/mssendmail.env, creates a private spool in
#   ./demo/queue, pipes a message into `mssendmail -t` exactly as cron or PHP
#   would, runs `mssendmail-worker --once`, and prints the .eml the worker
#   delivered to ./demo/outbox: the MIME that would have gone to Microsoft
#   Graph. Runs as any user; nothing outside this checkout is touched. Run it
#   again to send another message; `rm -rf demo` starts over.
#   VENV and DEMO override ./.venv and ./demo (the tests use both).
#
# EXIT STATUS
#   0 the message was delivered and printed; otherwise the failing step's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
DEMO=${DEMO:-$PWD/demo}
CONFIG=$DEMO/mssendmail.env

step() { printf '\n==> %s\n' "$*"; }

# Only the demo config counts: no key leaks in from the caller's environment.
run() { env -i PATH="$PATH" HOME="${HOME:-/}" LANG=C.UTF-8 MSSENDMAIL_CONFIG="$CONFIG" "$@"; }

if [ ! -x "$VENV/bin/mssendmail-worker" ]; then
	step "creating $VENV and installing mssendmail into it (once, under a minute)"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check -e .
fi

step "writing $CONFIG"
mkdir -p "$DEMO/outbox"
cat >"$CONFIG" <<EOF
# Demo: deliver into $DEMO/outbox instead of Microsoft Graph.
QUEUE_DIR=$DEMO/queue
TRANSPORT=file
OUTBOX_DIR=$DEMO/outbox
SENDER=noreply@example.com
FROM_NAME=mssendmail demo
RETRY_MIN=1s
EOF
cat "$CONFIG"

step "creating the spool $DEMO/queue"
if run "$VENV/bin/python" -c 'import mssendmail.admin.cli' 2>/dev/null; then
	run "$VENV/bin/mssendmail-queue" init
else
	run "$VENV/bin/python" -c 'import sys; from mssendmail import spool; [print(c) for c in spool.init_tree(sys.argv[1])]' "$DEMO/queue"
fi

step "submitting: printf '...' | mssendmail -t"
before=$(find "$DEMO/outbox" -maxdepth 1 -name '*.eml' | wc -l)
printf 'To: you@example.com\nSubject: Hello from mssendmail on %s\n\nIt works: this went through the spool and the worker at %s.\n' \
	"$(hostname)" "$(date -R)" | run "$VENV/bin/mssendmail" -t
echo "queued (exit 0)"

step "delivering: mssendmail-worker --once"
run "$VENV/bin/mssendmail-worker" --once
echo "worker finished (exit 0)"

eml=$(find "$DEMO/outbox" -maxdepth 1 -name '*.eml' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
after=$(find "$DEMO/outbox" -maxdepth 1 -name '*.eml' | wc -l)
if [ -z "$eml" ] || [ "$after" -le "$before" ]; then
	echo "demo.sh: the worker delivered nothing to $DEMO/outbox; see its output above" >&2
	exit 1
fi
step "delivered $eml"
tr -d '\r' <"$eml"
