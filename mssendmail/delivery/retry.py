"""The backoff schedule, pure: tests call it with their own random source."""

from __future__ import annotations

import random

JITTER_LOW = 0.8  # delays land in [0.8, 1.0] x the nominal one: spread, never longer than RETRY_MAX


def backoff(
    attempts: int,
    retry_min: float,
    retry_max: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt after `attempts` failed ones (attempts >= 1).

    next = min(RETRY_MAX, RETRY_MIN * 2^(attempts-1)) with jitter, or
    Retry-After when that is longer (Graph's word beats our guess).
    """
    exponent = max(0, attempts - 1)
    nominal = retry_max if exponent > 60 else min(retry_max, retry_min * 2.0**exponent)
    jitter = (rng or random).uniform(JITTER_LOW, 1.0)
    delay = nominal * jitter
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay
