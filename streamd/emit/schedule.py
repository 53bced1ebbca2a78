"""The senders' retry rules as sans-IO state machines: time and outcomes in, decisions out.

No trio, no sockets, no clock: the caller passes ``now`` (protocol seconds) and the
outcome of each attempt (an HTTP status, or ``None`` for a timeout or a connection that
failed), and gets back what the sender does next. The runtime shell
(:mod:`streamd.emit.sender`) sleeps and sends; the tests drive these with a fake clock.

CONTRACT.md §1a (legacy push): a failed batch is retried 3 times, 3 minutes apart; then
the stream pauses and the sender retries every 3 minutes until one succeeds (which
re-enables it); undelivered data is kept 7 days. §1b (Adobe I/O Events): only 429 and
5xx other than 505 are retried, after about 1, 2, 4, 8 and then every 15 minutes, for up
to 24 hours; every other status drops the event for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0

Action = Literal["ack", "retry", "give_up"]
LegacyState = Literal["active", "retrying", "paused"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: acknowledge, retry after ``wait`` s, or give up."""

    action: Action
    wait: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LegacyPolicy:
    """The legacy push sender's timing (CONTRACT.md §1a)."""

    cadence: float = 2.0
    min_batch: int = 100
    max_batch: int = 500
    timeout: float = 20.0
    retries: int = 3
    retry_interval: float = 3 * MINUTE
    paused_interval: float = 3 * MINUTE
    retention: float = 7 * DAY


@dataclass(frozen=True, slots=True)
class IoPolicy:
    """The Adobe I/O Events sender's timing (CONTRACT.md §1b).

    Adobe's batches also stay under 2 MB; the generated events are ~1 kB, so 20 of
    them never come near it and no byte limit is applied.
    """

    max_events: int = 20
    timeout: float = 10.0
    waits: tuple[float, ...] = (1 * MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE)
    then_every: float = 15 * MINUTE
    horizon: float = 24 * HOUR


def is_success(status: int | None) -> bool:
    """A 2xx answer acknowledges a delivery."""
    return status is not None and 200 <= status < 300


def io_retryable(status: int | None) -> bool:
    """Adobe retries 429 and 5xx except 505, and attempts that got no answer at all."""
    return status is None or status == 429 or (500 <= status < 600 and status != 505)


def _describe(status: int | None) -> str:
    return "no answer (timeout or connection failure)" if status is None else f"status {status}"


class LegacyDelivery:
    """Retry state of one legacy push batch, from its first attempt on.

    ``state`` is what the subscription looks like to Marketo's UI: ``active`` until an
    attempt fails, ``retrying`` during the first ``retries`` retries, ``paused`` after
    them (the sender then retries every ``paused_interval`` until one succeeds). Every
    non-2xx answer counts as a failure: the documentation names no status the legacy
    sender treats as final.
    """

    def __init__(self, policy: LegacyPolicy, now: float) -> None:
        self.policy = policy
        self.first_attempt = now
        self.failures = 0
        self.state: LegacyState = "active"

    def after(self, now: float, status: int | None) -> Decision:
        """The decision after an attempt that ended at ``now`` with ``status``."""
        if is_success(status):
            self.state = "active"
            return Decision("ack")
        self.failures += 1
        p = self.policy
        if self.failures <= p.retries:
            self.state = "retrying"
            wait = p.retry_interval
        else:
            self.state = "paused"
            wait = p.paused_interval
        if now + wait - self.first_attempt > p.retention:
            return Decision(
                "give_up", reason=f"{_describe(status)}; undelivered for the 7-day retention"
            )
        return Decision("retry", wait, _describe(status))


class IoDelivery:
    """Retry state of one Adobe I/O Events delivery (one request body)."""

    def __init__(self, policy: IoPolicy, now: float) -> None:
        self.policy = policy
        self.first_attempt = now
        self.retries = 0

    def next_wait(self) -> float:
        """The wait before the next retry: 1, 2, 4, 8 minutes, then every 15."""
        waits = self.policy.waits
        return waits[self.retries] if self.retries < len(waits) else self.policy.then_every

    def after(self, now: float, status: int | None) -> Decision:
        """The decision after an attempt that ended at ``now`` with ``status``."""
        if is_success(status):
            return Decision("ack")
        if not io_retryable(status):
            return Decision("give_up", reason=f"{_describe(status)}: not retried, dropped")
        wait = self.next_wait()
        if now + wait - self.first_attempt > self.policy.horizon:
            return Decision("give_up", reason=f"{_describe(status)}; 24 h of retries exhausted")
        self.retries += 1
        return Decision("retry", wait, _describe(status))


HealthState = Literal["active", "unstable", "disabled"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Adobe's registration health rule (CONTRACT.md §1b, "Registration health")."""

    window: float = 24 * HOUR
    min_attempts: int = 10
    failure_share: float = 0.8
    disable_after: float = 24 * HOUR
    bucket: float = MINUTE  # attempts are counted per minute: memory stays bounded


class RegistrationHealth:
    """Active → Unstable → Disabled, from the outcomes of a registration's attempts.

    With at least ``min_attempts`` attempts in the last ``window`` of which
    ``failure_share`` or more failed, the registration is Unstable; still Unstable
    ``disable_after`` later, it is Disabled for good (re-enabling is manual). Below the
    threshold an Unstable registration is Active again.
    """

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self._buckets: dict[int, list[int]] = {}  # bucket -> [attempts, failures]
        self.attempts = 0
        self.failures = 0
        self.state: HealthState = "active"
        self.unstable_since: float | None = None

    def record(self, now: float, ok: bool) -> HealthState:
        """Count one attempt that ended at ``now``; return the state after it."""
        p = self.policy
        if self.state == "disabled":
            return self.state
        key = int(now // p.bucket)
        counts = self._buckets.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += 0 if ok else 1
        self.attempts += 1
        self.failures += 0 if ok else 1
        oldest = int((now - p.window) // p.bucket)
        for stale in [k for k in self._buckets if k <= oldest]:
            n, f = self._buckets.pop(stale)
            self.attempts -= n
            self.failures -= f
        failing = (
            self.attempts >= p.min_attempts and self.failures >= p.failure_share * self.attempts
        )
        if not failing:
            self.state, self.unstable_since = "active", None
        elif self.unstable_since is None:
            self.state, self.unstable_since = "unstable", now
        elif now - self.unstable_since >= p.disable_after:
            self.state = "disabled"
        return self.state
