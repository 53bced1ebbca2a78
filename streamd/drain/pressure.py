"""Ingest first: how busy the journal writer is, so sinks yield while ingest is saturated.

On a small machine the drain and ingest share the cores (and one interpreter). Sinks that
cannot keep up with a saturated ingest anyway would otherwise take a third of its
throughput; the journal holds what they have not delivered, and they catch up at full
speed once the load drops. So while the writer spends at least ``busy_ratio`` of the wall
time committing (ingest is the bottleneck), each sink waits ``pause`` seconds before it
reads its next page (at most 1,000 events). Below the ratio nothing waits: at moderate
load the drain delivers with its usual latency.

The ratio is the writer's commit time (``WriterStatistics.commit_seconds_sum``) over
wall time, measured over windows of ``window`` seconds; sans-IO apart from the two
callables it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class YieldSettings:
    """``pause`` 0 turns yielding off."""

    pause: float = 0.25
    busy_ratio: float = 0.5
    window: float = 0.25


class IngestPressure:
    """The writer's recent busy ratio, sampled lazily (no task, no timer)."""

    def __init__(
        self,
        commit_seconds: Callable[[], float],
        settings: YieldSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._commit_seconds = commit_seconds
        self._clock = clock
        self._since = clock()
        self._spent = commit_seconds()
        self.busy = 0.0  # the last complete window's ratio
        self.yields = 0  # pauses taken by every sink together, since start

    def sample(self) -> float:
        """The busy ratio of the last complete window (a new window starts when one ends)."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self.settings.window:
            spent = self._commit_seconds()
            self.busy = max(0.0, min(1.0, (spent - self._spent) / elapsed))
            self._since, self._spent = now, spent
        return self.busy

    def pause(self) -> float:
        """Seconds a sink should wait before its next page (0: go on)."""
        s = self.settings
        if s.pause <= 0 or self.sample() < s.busy_ratio:
            return 0.0
        self.yields += 1
        return s.pause
