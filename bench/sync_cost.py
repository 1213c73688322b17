"""What the unprivileged commit's flush would cost as sync(2) instead of syncfs(2).

    sudo .venv/bin/python bench/sync_cost.py [--dirty-mb 256] [--rounds 3]

An unprivileged submitter cannot fsync maildrop/ (no read bit), so it
flushes the spool's whole file system with syncfs(2)
(mssendmail/spool/layout.py). os.sync() would avoid importing _ctypes, but
sync(2) waits for every file system. This script makes a second file system
(a loop-mounted ext4 image in a temporary directory), leaves --dirty-mb of
unwritten data on it, as a busy data volume has, and times, in each round:
syncfs(2) of the file system holding the temporary directory (the spool's
stand-in), then sync(2). Needs root and a free loop device.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dirty-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/sync_cost.py: needs root (mount -o loop)", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    results: dict[str, list[float]] = {"syncfs": [], "sync": []}
    with tempfile.TemporaryDirectory(prefix="mssendmail-sync-") as tmp:
        image, mnt = os.path.join(tmp, "volume.img"), os.path.join(tmp, "volume")
        os.mkdir(mnt)
        with open(image, "wb") as fh:
            fh.truncate((args.dirty_mb * 2 + 256) << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
        spool_fd = os.open(tmp, os.O_RDONLY)
        try:
            chunk = os.urandom(1 << 20)
            for rnd in range(args.rounds):
                if rnd:
                    os.unlink(os.path.join(mnt, f"data{rnd - 1}"))
                os.sync()
                time.sleep(3)
                with open(os.path.join(mnt, f"data{rnd}"), "wb") as fh:
                    for _ in range(args.dirty_mb):
                        fh.write(chunk)
                start = time.perf_counter()
                if libc.syncfs(spool_fd) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs")
                results["syncfs"].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                os.sync()
                results["sync"].append((time.perf_counter() - start) * 1000)
        finally:
            os.close(spool_fd)
            subprocess.run(["umount", mnt], check=True)
    print(f"{args.dirty_mb} MB unwritten on a second file system, {args.rounds} rounds:")
    for name, times in results.items():
        shown = ", ".join(f"{t:.1f}" for t in times)
        print(f"  {name:7s} median {statistics.median(times):7.1f} ms  ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
