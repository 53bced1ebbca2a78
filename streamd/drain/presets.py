"""Named presets of pool and retry settings (sans-IO data).

``marketo`` reproduces the legacy Marketo push's documented behaviour towards
its receivers: a batch every 2 s of up to 500 events, a 20 s timeout, 3
retries 3 minutes apart, then a pause that retries every 3 minutes until a
delivery succeeds (which resumes the stream). Transient failures never
dead-letter under this preset: the legacy stream waited, it did not drop. It is
the timing only: an http sink's body is its ``format`` (``legacy-push`` for
Marketo's own body, :mod:`streamd.drain.bodies`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamd.drain.policy import RetrySettings


@dataclass(frozen=True, slots=True)
class PoolSettings:
    workers: int = 4
    batch_size: int = 500
    linger: float = 0.2
    interval: float = 0.0
    max_in_flight: int = 5000
    timeout: float = 20.0


DEFAULT_POOL = PoolSettings()
DEFAULT_RETRY = RetrySettings()
# The default preset per kind, where one pool does not fit all: each sqlite commit
# costs an fsync and rewrites index pages, so bigger groups pay (200k-event backlog:
# 44-48k events/s with 500-event batches in a 5,000 window, 64k with 2,000 in 20,000;
# ARCHITECTURE.md, "Drain"). Its window holds references only (seq and routing
# columns), not the events' JSON.
KIND_POOLS: dict[str, PoolSettings] = {
    "sqlite": PoolSettings(batch_size=2000, max_in_flight=20_000),
    "postgres": PoolSettings(batch_size=2000, max_in_flight=20_000),
}

PRESETS: dict[str, tuple[PoolSettings, RetrySettings]] = {
    "marketo": (
        # One batch at a time, at most one every 2 s, each closed after 2 s or 500 events.
        PoolSettings(
            workers=1, batch_size=500, linger=2.0, interval=2.0, max_in_flight=500, timeout=20.0
        ),
        RetrySettings(
            max_attempts=0,  # never dead-letter a transient failure
            backoff_base=180.0,
            backoff_cap=180.0,
            jitter=0.0,
            pause_after=4,  # the first attempt and 3 retries
            probe_interval=180.0,
        ),
    ),
}


def resolve(
    kind: str, preset: str, pool: Mapping[str, Any], retry: Mapping[str, Any]
) -> tuple[PoolSettings, RetrySettings]:
    """The preset's (else the kind's default) pool and retry settings, with the keys a
    sink sets (``None``: unset) on top."""
    base_pool, base_retry = PRESETS.get(preset, (KIND_POOLS.get(kind, DEFAULT_POOL), DEFAULT_RETRY))
    return (
        dataclasses.replace(base_pool, **{k: v for k, v in pool.items() if v is not None}),
        dataclasses.replace(base_retry, **{k: v for k, v in retry.items() if v is not None}),
    )
