"""Exponential backoff with jitter, for every retry loop (sans-IO: the caller passes the rng).

The drain's sinks (``drain/policy.py``) and the pull sources (``ingest/pull.py``) wait
the same way after the n-th failure in a row: ``base * 2**(n - 1)``, capped, then
shortened by up to ``jitter`` of itself, so many clients failing at once do not retry
in lockstep. The jitter only shortens: a delay never exceeds the cap.
"""

from __future__ import annotations

import random

# 2**62 times any base above a microsecond is past every cap; the bound keeps the
# float finite for a counter that kept growing (days of failures).
_MAX_EXPONENT = 62


def backoff_delay(
    failures: int, *, base: float, cap: float, jitter: float, rng: random.Random
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 for the first).

    ``jitter`` in [0, 1] is the largest share taken off; 0 means no randomness (and
    ``rng`` is not used). Never raises for ``failures`` < 1 (treated as 1).
    """
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    delay = min(cap, base * (2.0**exponent))
    if jitter:
        delay *= 1.0 - jitter * rng.random()
    return delay
