"""Stream health: is each stream flowing, and would Adobe call it unstable?

Adobe marks an I/O Events registration *Unstable* when, over 24 hours, at
least 10 deliveries were attempted and 80% or more failed (CONTRACT.md §1);
24 hours later it is *Disabled* and must be re-enabled by hand. streamd
counts what it answered per source in hourly buckets, so it can warn
before that happens, and notes when a source (and each Munchkin id) was
last heard from, so it can warn when a stream goes silent.

Sans-IO: the clock is passed in; :meth:`StreamHealth.check` returns the
warnings to log, each once per episode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

HOUR = 3600.0
WINDOW_HOURS = 24
ADOBE_MIN_ATTEMPTS = 10
ADOBE_UNSTABLE_RATIO = 0.8


@dataclass(slots=True)
class _Source:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # hour -> [attempts, failures]
    last_success: float | None = None
    silent_warned: bool = False
    failing_warned_hour: int | None = None


@dataclass
class StreamHealth:
    """Per-source answer counts over 24 h and the time of the last accepted delivery."""

    sources: list[str]
    silence_warning: float = 3600.0  # 0: never warn
    failure_warning_ratio: float = 0.5
    clock: Callable[[], float] = field(default=lambda: 0.0)
    started: float = 0.0
    _state: dict[str, _Source] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()
        for name in self.sources:
            self._state[name] = _Source()

    def observe(self, source: str, status: int) -> None:
        """One POST answered on ``source`` with ``status``."""
        state = self._state.get(source)
        if state is None:
            return  # a path with no source (404): no stream to judge
        now = self.clock()
        hour = int(now // HOUR)
        bucket = state.buckets.get(hour)
        if bucket is None:
            bucket = state.buckets[hour] = [0, 0]
            for old in [h for h in state.buckets if h <= hour - WINDOW_HOURS]:
                del state.buckets[old]
        bucket[0] += 1
        if 200 <= status < 300:
            state.last_success = now
            state.silent_warned = False
        else:
            bucket[1] += 1

    def window(self, source: str) -> tuple[int, int]:
        """(attempts, failures) of ``source`` over the last 24 hours."""
        state = self._state.get(source)
        if state is None:
            return 0, 0
        first = int(self.clock() // HOUR) - WINDOW_HOURS + 1
        attempts = sum(b[0] for h, b in state.buckets.items() if h >= first)
        failures = sum(b[1] for h, b in state.buckets.items() if h >= first)
        return attempts, failures

    def silence(self, source: str) -> float:
        """Seconds since the last accepted delivery (since start when there was none)."""
        state = self._state.get(source)
        last = state.last_success if state is not None else None
        return self.clock() - (last if last is not None else self.started)

    def check(self) -> list[str]:
        """Warnings due now: a silent stream, a failure share nearing Adobe's limit."""
        warnings = []
        now = self.clock()
        for name, state in self._state.items():
            silent = self.silence(name)
            if self.silence_warning and silent >= self.silence_warning and not state.silent_warned:
                state.silent_warned = True
                since = "since streamd started" if state.last_success is None else "for"
                warnings.append(
                    f"source {name}: no delivery accepted {since} {silent / 60:.0f} min "
                    f"(health.silence_warning is {self.silence_warning / 60:.0f} min)"
                )
            attempts, failures = self.window(name)
            hour = int(now // HOUR)
            if (
                attempts >= ADOBE_MIN_ATTEMPTS
                and failures / attempts >= self.failure_warning_ratio
                and state.failing_warned_hour != hour
            ):
                state.failing_warned_hour = hour
                warnings.append(
                    f"source {name}: {failures} of {attempts} requests in 24 h were refused "
                    f"({failures / attempts:.0%}); at {ADOBE_UNSTABLE_RATIO:.0%} of at least "
                    f"{ADOBE_MIN_ATTEMPTS} Adobe marks the registration Unstable, then Disabled"
                )
        return warnings
