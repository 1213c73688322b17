import random

import pytest

from mssendmail.delivery.retry import JITTER_LOW, backoff


@pytest.mark.parametrize(
    ("attempts", "nominal"), [(1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (50, 3600)]
)
def test_doubles_from_retry_min_up_to_retry_max(attempts: int, nominal: float) -> None:
    rng = random.Random(1)
    for _ in range(200):
        delay = backoff(attempts, 60, 3600, rng=rng)
        assert nominal * JITTER_LOW <= delay <= nominal


def test_jitter_spreads_delays() -> None:
    rng = random.Random(2)
    delays = {round(backoff(3, 60, 3600, rng=rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_retry_after_wins_when_longer() -> None:
    assert backoff(1, 60, 3600, retry_after=900, rng=random.Random(0)) == 900


def test_retry_after_ignored_when_shorter() -> None:
    delay = backoff(4, 60, 3600, retry_after=5, rng=random.Random(0))
    assert delay >= 480 * JITTER_LOW


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert backoff(10_000, 60, 3600, rng=random.Random(0)) <= 3600
