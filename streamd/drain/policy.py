"""Retry, backoff, pause and probe decisions of one sink (sans-IO: time is passed in).

The engine reports each attempt's outcome with the current time and is told
what to do next: retry at a time, dead-letter the batch, or hold it until the
sink resumes. A sink whose destination keeps failing (``pause_after``
consecutive transient failures) pauses: one batch, the probe, is retried every
``probe_interval``; its success resumes the sink.

No batch holds a sink forever (the "eternal probe"): a probe that has failed
``max_attempts`` times is dead-lettered as a *suspect* and the next batch
probes. If that batch succeeds, the destination is up and the suspect was the
problem: it stays a dead letter. If that batch also fails ``max_attempts``
times, the destination is down, not the batch: the suspect's dead letters are
marked for retry (they are delivered again once the sink is up) and the new
probe keeps probing without a limit, so an outage of hours leaves the events
waiting in the journal, not in the dead-letter table. ``max_attempts = 0``
(the ``marketo`` preset) never dead-letters: the probe waits for the destination.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from streamd.core.backoff import backoff_delay


class Kind(Enum):
    """How an attempt ended."""

    CONFIRMED = "confirmed"
    TRANSIENT = "transient"  # retry: 429, 5xx, timeouts, connection errors
    PERMANENT = "permanent"  # the batch will never be accepted: dead-letter it
    GONE = "gone"  # the destination says it is gone for good (HTTP 410): disable the sink


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """A sink's retry policy; ``max_attempts`` 0 means transient failures never dead-letter."""

    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    jitter: float = 0.5
    pause_after: int = 5
    probe_interval: float = 30.0
    max_retry_after: float = 3600.0


class Action(Enum):
    """What the engine does with a batch after a transient failure."""

    RETRY = "retry"  # try again at ``Verdict.at``
    DEAD_LETTER = "dead_letter"
    PROBE = "probe"  # the sink just paused: this batch is the probe, tried at ``at``
    HOLD = "hold"  # the sink is paused and another batch probes: wait for the resume


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    at: float = 0.0
    # PROBE only: a second probe in a row reached max_attempts, so the destination is
    # down: the suspect dead-lettered before it must be marked for retry.
    retry_suspects: bool = False


def backoff(settings: RetrySettings, attempts: int, rng: random.Random) -> float:
    """Delay after the ``attempts``-th failed attempt: :func:`streamd.core.backoff_delay`
    with the sink's base, cap and jitter."""
    return backoff_delay(
        attempts,
        base=settings.backoff_base,
        cap=settings.backoff_cap,
        jitter=settings.jitter,
        rng=rng,
    )


class Health:
    """Pause/resume state of one sink, fed with attempt outcomes."""

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.consecutive_failures = 0
        self.paused = False
        self.probe: object | None = None  # the batch that probes while paused
        self.next_probe = 0.0  # a batch taking over as the probe waits until then
        self.suspected = False  # a probe was dead-lettered after max_attempts in this pause
        self.outage = False  # ... and the next probe failed as often: the destination is down
        self.last_error: str | None = None

    def succeeded(self) -> bool:
        """Record a confirmed attempt; True when it ended a pause (resume everything)."""
        self.consecutive_failures = 0
        resumed = self.paused
        self.paused = False
        self.probe = None
        self.suspected = self.outage = False
        return resumed

    def may_attempt(self, batch: object) -> bool:
        """While paused, only the probe is attempted; with no probe (the last one was
        dead-lettered), ``batch`` becomes the probe."""
        if not self.paused or self.probe is batch:
            return True
        if self.probe is None:
            self.probe = batch
            return True
        return False

    def failed(
        self,
        batch: object,
        attempts: int,
        now: float,
        *,
        reason: str,
        retry_after: float | None = None,
    ) -> Verdict:
        """Decide what follows the ``attempts``-th transient failure of ``batch`` at ``now``."""
        s = self.settings
        self.last_error = reason
        self.consecutive_failures += 1
        wait = backoff(s, attempts, self._rng)
        if retry_after is not None:
            # The destination said when: never sooner, and never absurdly later.
            wait = max(wait, min(max(retry_after, 0.0), s.max_retry_after))
        next_probe = now + max(s.probe_interval, _bounded(retry_after, s))
        if self.paused:
            if batch is not self.probe:
                return Verdict(Action.HOLD)
            if s.max_attempts and attempts >= s.max_attempts and not self.outage:
                if not self.suspected:
                    # Maybe this batch, maybe the destination: let the next batch tell.
                    self.suspected = True
                    self.probe = None
                    self.next_probe = next_probe
                    return Verdict(Action.DEAD_LETTER)
                self.outage = True  # two batches in a row: the destination is down
                return Verdict(Action.PROBE, next_probe, retry_suspects=True)
            return Verdict(Action.PROBE, next_probe)
        if self.consecutive_failures >= s.pause_after:
            self.paused = True
            self.probe = batch
            return Verdict(Action.PROBE, next_probe)
        if s.max_attempts and attempts >= s.max_attempts:
            return Verdict(Action.DEAD_LETTER)
        return Verdict(Action.RETRY, now + wait)

    def permanent(self, reason: str) -> bool:
        """Record a permanent failure: the destination answered, so it is up again.

        True when that ended a pause (resume everything).
        """
        resumed = self.succeeded()
        self.last_error = reason
        return resumed


def _bounded(retry_after: float | None, s: RetrySettings) -> float:
    return 0.0 if retry_after is None else min(max(retry_after, 0.0), s.max_retry_after)
