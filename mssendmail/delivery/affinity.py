"""WORKER_CPU: keep the worker's threads on one CPU.

Why: the worker's threads take turns on CPython's GIL, dozens of times per
message (every socket read, fsync and rename releases it). When the threads
sit on different CPUs, each handoff is a cross-CPU wake-up, and on a virtual
machine that is an inter-processor interrupt. Python code runs on one core at
a time anyway, so one CPU loses nothing, and bench/drain.py drains markedly
faster with less CPU per message (the figures: bench/RESULTS.md, Drain).

Values: ``auto`` (default) picks the CPU the worker started on, when it may
run on more than one; ``all`` leaves placement to the scheduler; a number
pins to that CPU. It is chosen once at start: under systemd, ``CPUAffinity=``
narrows the set ``auto`` picks from. The trade-off: the kernel no longer
moves the worker off a CPU that something else keeps busy; ``all`` is the
way out.
"""

from __future__ import annotations

import os

from mssendmail.errors import ConfigError


def current_cpu() -> int | None:
    """The CPU this thread last ran on (field 39 of /proc/self/stat)."""
    try:
        with open("/proc/thread-self/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return int(fields[36])  # fields after ")" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def choose(setting: str, allowed: set[int], current: int | None) -> int | None:
    """The one CPU to run on, or None to leave placement alone."""
    value = setting.strip().lower()
    if value == "all":
        return None
    if value == "auto":
        if len(allowed) <= 1:
            return None
        return current if current in allowed else max(allowed)
    if not value.isdigit():
        raise ConfigError(f"WORKER_CPU={setting!r} is not valid; use auto, all or a CPU number")
    cpu = int(value)
    if cpu not in allowed:
        raise ConfigError(
            f"WORKER_CPU={cpu} is not a CPU this worker may run on "
            f"(allowed: {','.join(map(str, sorted(allowed)))}); use auto or one of those"
        )
    return cpu


def apply(setting: str) -> int | None:
    """Pin the calling thread, and every thread it starts later; the CPU or None.

    Call it before any thread starts: affinity is per thread and inherited.
    """
    try:
        allowed = os.sched_getaffinity(0)
    except OSError:
        return None  # no affinity support: nothing to gain or lose
    cpu = choose(setting, allowed, current_cpu())
    if cpu is None:
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None  # a container that forbids it: run unpinned
    return cpu
