"""The one backoff: exponential, capped, jitter that only shortens (sans-IO)."""

from __future__ import annotations

import random

import pytest

from streamd.core import backoff_delay


@pytest.mark.parametrize(
    ("failures", "base", "cap", "expected"),
    [
        (1, 1.0, 300.0, 1.0),
        (2, 1.0, 300.0, 2.0),
        (3, 1.0, 300.0, 4.0),
        (9, 1.0, 300.0, 256.0),
        (10, 1.0, 300.0, 300.0),
        (10**6, 1.0, 300.0, 300.0),  # a counter that kept growing: still the cap
        (0, 0.5, 10.0, 0.5),  # before any failure: as after the first
        (4, 0.05, 0.3, 0.3),
    ],
)
def test_exponential_and_capped_without_jitter(
    failures: int, base: float, cap: float, expected: float
) -> None:
    assert backoff_delay(failures, base=base, cap=cap, jitter=0.0, rng=random.Random(1)) == expected


@pytest.mark.parametrize("jitter", [0.25, 0.5, 1.0])
def test_jitter_only_shortens_within_its_share(jitter: float) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for failures in range(1, 40):
        full = min(60.0, 2.0 * 2 ** (failures - 1))
        delay = backoff_delay(failures, base=2.0, cap=60.0, jitter=jitter, rng=rng)
        assert full * (1 - jitter) <= delay <= full


def test_the_same_seed_gives_the_same_delays() -> None:
    def run() -> list[float]:
        rng = random.Random(7)
        return [backoff_delay(n, base=1, cap=30, jitter=0.5, rng=rng) for n in range(1, 10)]

    assert run() == run()
