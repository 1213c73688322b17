#!/bin/sh
# bench/run_all.sh -- run every benchmark with its defaults, one after another.
#
#   bench/run_all.sh            # everything (~10 minutes on 2 cores)
#   bench/run_all.sh --quick    # smaller counts, for a smoke test (~2 minutes)
#
# Prints the date, the machine (nproc, CPU model, load) and the peer
# baselines measured in this same run (python3 -I -c pass; nullmailer's or
# Postfix's sendmail when installed), then each script's own report.
# Each script checks its goals and exits non-zero on a miss; this script
# runs them all anyway and exits 1 if any failed. Copy the numbers into the
# matching section of bench/RESULTS.md (bench/smtpd.py --record does its own).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)"
echo "python:  $($PY -c 'import sys; print(sys.version.split()[0])')"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"

# Peer baseline: bare interpreter start-up, median of 30 runs, in ms.
$PY - <<'EOF'
import shutil, statistics, subprocess, time

def median_ms(cmd, runs=30, stdin=None):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), max(times)

print("peer:    python3 -I -c pass: median %.1f ms (min %.1f, max %.1f)" % median_ms(["python3", "-I", "-c", "pass"]))
for name, path in (("nullmailer", "/usr/sbin/nullmailer-inject"), ("postfix", "/usr/sbin/postdrop")):
    if shutil.which(path):
        msg = b"To: a@example.org\nSubject: x\n\nbody\n"
        print("peer:    %s sendmail: median %.1f ms (min %.1f, max %.1f)"
              % ((name,) + median_ms(["/usr/sbin/sendmail", "-t", "-i"], stdin=msg)))
    else:
        print(f"peer:    {name} not installed; no baseline")
EOF

failed=""
run() {
    echo
    echo "== $*"
    start=$(date +%s)
    if "$PY" "$@"; then
        echo "== ok ($(( $(date +%s) - start )) s)"
    else
        echo "== FAILED ($(( $(date +%s) - start )) s)"
        failed="$failed $1"
    fi
}

if [ "$QUICK" = 1 ]; then
    run bench/submit.py --rounds 30 --writers 10 --per-writer 20 --big-mb 20
    run bench/smtpd.py --messages 300
    run bench/drain.py --count 1000
    run bench/drain.py --count 200 --latency 0.2
    run bench/large.py --sizes 5
    run bench/mime.py --mb 5
else
    run bench/submit.py
    run bench/smtpd.py
    run bench/drain.py
    run bench/drain.py --count 2000 --latency 0.2
    run bench/large.py
    run bench/large.py --crlf
    run bench/mime.py
fi

echo
if [ -n "$failed" ]; then
    echo "FAILED:$failed"
    exit 1
fi
echo "all benchmarks met their goals"
