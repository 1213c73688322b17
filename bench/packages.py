"""Submission cost through the packaged /usr/sbin/sendmail (issue 18).

    sudo .venv/bin/python bench/packages.py [--deb dist/mssendmail_*.deb] [--rounds 60]

Builds the .deb (unless --deb names one), installs it into a clean Debian 12
root made by mmdebstrap (as tests/test_packages.py does) and, inside that
root as an unprivileged user, times in one alternating loop, so that machine
load hits all alike:

  baseline   python3 -I -c pass          (that system's python3)
  sendmail   /usr/sbin/sendmail -t -i < 4 KB message   (the package's launcher)
  startup    /usr/sbin/sendmail -bi: the launcher's start-up and argv parsing
             only (newaliases is a no-op), for diagnosis
  wrapper    the venv's pip console script for the same entry point, for
             comparison only (the package does not use it)

The same loop then runs once more as root, whose submission fsyncs
maildrop/ directly. An unprivileged submitter cannot open maildrop/: on ext4,
XFS and btrfs it fsyncs the renamed file, which commits the rename there, and
elsewhere it syncfs(2)s the file system (mssendmail/spool/layout.py). It tells
them apart by /proc/self/mountinfo, so the root is bind-mounted on itself and
given a /proc while the loops run, as a server's root file system is; with
--no-proc it runs without them and takes the syncfs path.

Goal: median(sendmail) / median(baseline) <= 1.5. Prints a summary; exits 1
on a miss. Needs root and mmdebstrap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.package_helpers import Root, build, make_base, missing_tools  # noqa: E402

GOAL = 1.5
HARNESS = r"""
import json, statistics, subprocess, sys, time
rounds = int(sys.argv[1])
msg = open("/tmp/bench-message", "rb").read()
cmds = {
    "baseline": (["/usr/bin/python3", "-I", "-c", "pass"], None),
    "sendmail": (["/usr/sbin/sendmail", "-t", "-i"], msg),
    "startup": (["/usr/sbin/sendmail", "-bi"], None),
    "wrapper": (["/usr/lib/mssendmail/venv/bin/mssendmail", "-t", "-i"], msg),
}
times = {k: [] for k in cmds}
for _ in range(3):  # warm the page cache
    for argv, data in cmds.values():
        subprocess.run(argv, input=data, check=True)
for _ in range(rounds):
    for name, (argv, data) in cmds.items():
        start = time.perf_counter()
        subprocess.run(argv, input=data, check=True)
        times[name].append((time.perf_counter() - start) * 1000)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}
                 | {k + "_min": min(v) for k, v in times.items()}))
"""


@contextlib.contextmanager
def mount_table(path: Path, wanted: bool) -> Iterator[None]:
    """The root bind-mounted on itself, with /proc: its mount shows in mountinfo."""
    if not wanted:
        yield
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(path / "proc")], check=True)
        yield
    finally:
        # Before the temporary directory is removed: never rmtree through /proc.
        subprocess.run(["umount", "--recursive", str(path)], check=True)


def fast_path(root: Root) -> bool:
    """What the submitter will decide: does maildrop/'s file system commit a rename on fsync?"""
    code = (
        "import os; from mssendmail.spool.layout import rename_commits_on_fsync as r;"
        "fd = os.open('/var/lib/mssendmail/queue', os.O_RDONLY); print(r(fd))"
    )
    # An older package has no rename_commits_on_fsync: it always takes the syncfs path.
    answer = root.run("/usr/lib/mssendmail/venv/bin/python", "-I", "-c", code).stdout.strip()
    return answer == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deb", type=Path, help="a built .deb (default: build one)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument(
        "--no-proc", action="store_true", help="no /proc in the root: the syncfs path"
    )
    args = parser.parse_args()
    why = missing_tools("mmdebstrap", "chroot", "setpriv")
    if why is not None:
        print(f"bench/packages.py: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mssendmail-bench-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        deb = args.deb or build(work / "dist", only="deb").deb
        built = time.monotonic()
        make_base(work / "base.tar")
        root = Root(work / "root", work / "base.tar")
        root.file(f"/tmp/{deb.name}").write_bytes(deb.read_bytes())
        result = root.apt("install", f"/tmp/{deb.name}")
        assert result.returncode == 0, result.stdout + result.stderr
        installed = time.monotonic()
        root.ok("useradd", "--create-home", "alice")
        body = "The quick brown fox jumps over the lazy dog, again and again.\n" * 64
        root.file("/tmp/bench-message").write_text(
            "From: alice@contoso.example\nTo: bob@example.org\nSubject: bench\n\n" + body
        )
        load = Path("/proc/loadavg").read_text().split()[0]
        with mount_table(root.path, not args.no_proc):
            fast = "fast path" if fast_path(root) else "syncfs path"
            medians = json.loads(root.ok("python3", "-c", HARNESS, str(args.rounds), user="alice"))
            as_root = json.loads(root.ok("python3", "-c", HARNESS, str(args.rounds)))
        queued = sum(1 for _ in root.file("/var/lib/mssendmail/queue/maildrop").iterdir())
    ratio = medians["sendmail"] / medians["baseline"]
    wrapper = medians["wrapper"] / medians["baseline"]
    print(f"build {built - started:.0f} s, root + install {installed - built:.0f} s, load {load}")
    print(
        f"{args.rounds} alternating rounds in the Debian 12 root, as an unprivileged user"
        f" ({fast}):\n"
        f"  python3 -I -c pass        median {medians['baseline']:.1f} ms "
        f"(min {medians['baseline_min']:.1f})\n"
        f"  /usr/sbin/sendmail -t -i  median {medians['sendmail']:.1f} ms "
        f"(min {medians['sendmail_min']:.1f}): ratio {ratio:.2f} (goal <= {GOAL})\n"
        f"  /usr/sbin/sendmail -bi    median {medians['startup']:.1f} ms: ratio "
        f"{medians['startup'] / medians['baseline']:.2f} (start-up only)\n"
        f"  venv console script       median {medians['wrapper']:.1f} ms: ratio {wrapper:.2f}\n"
        f"as root: python3 -I -c pass {as_root['baseline']:.1f} ms, /usr/sbin/sendmail -t -i "
        f"{as_root['sendmail']:.1f} ms: ratio {as_root['sendmail'] / as_root['baseline']:.2f}\n"
        f"  {queued} messages queued"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
