"""Sans-IO parts of the drain: backoff, pause/probe policy, the marketo preset, routing."""

from __future__ import annotations

import random

import pytest

from streamd.drain.policy import Action, Health, RetrySettings, backoff
from streamd.drain.presets import PRESETS
from streamd.drain.routing import Filter, Route
from streamd.drain.sinks.base import DrainEvent


@pytest.mark.parametrize(
    ("attempts", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (500, 300.0)]
)
def test_backoff_is_exponential_and_capped(attempts: int, expected: float) -> None:
    settings = RetrySettings(backoff_base=1.0, backoff_cap=300.0, jitter=0.0)
    assert backoff(settings, attempts, random.Random(1)) == expected


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    settings = RetrySettings(backoff_base=2.0, backoff_cap=60.0, jitter=0.5)
    for attempts in range(1, 20):
        full = min(60.0, 2.0 * 2 ** (attempts - 1))
        assert full * 0.5 <= backoff(settings, attempts, rng) <= full


def test_retry_after_is_honoured_but_bounded() -> None:
    health = Health(RetrySettings(backoff_base=1, jitter=0, pause_after=99, max_retry_after=600))
    assert health.failed(object(), 1, 100.0, reason="429", retry_after=30).at == 130.0
    assert health.failed(object(), 1, 100.0, reason="429", retry_after=10**9).at == 700.0
    assert health.failed(object(), 1, 100.0, reason="429", retry_after=-5).at == 101.0


def test_dead_letter_after_max_attempts_unless_paused() -> None:
    health = Health(RetrySettings(max_attempts=3, jitter=0, pause_after=10))
    batch = object()
    assert health.failed(batch, 1, 0, reason="x").action is Action.RETRY
    assert health.failed(batch, 2, 0, reason="x").action is Action.RETRY
    assert health.failed(batch, 3, 0, reason="x").action is Action.DEAD_LETTER
    assert health.last_error == "x"


def test_pause_after_consecutive_failures_then_one_probe_and_resume() -> None:
    s = RetrySettings(max_attempts=0, backoff_base=1, jitter=0, pause_after=3, probe_interval=30)
    health = Health(s)
    a, b = object(), object()
    assert health.failed(a, 1, 0, reason="down").action is Action.RETRY
    assert health.failed(b, 1, 0, reason="down").action is Action.RETRY
    verdict = health.failed(a, 2, 5, reason="down")
    assert (verdict.action, verdict.at, health.paused) == (Action.PROBE, 35, True)
    # Another batch failing meanwhile waits for the resume; it does not count.
    assert health.failed(b, 2, 6, reason="down").action is Action.HOLD
    assert health.failed(a, 3, 35, reason="down").at == 65
    assert health.succeeded() is True
    assert (health.paused, health.probe, health.consecutive_failures) == (False, None, 0)
    assert health.succeeded() is False


def test_success_between_failures_prevents_the_pause() -> None:
    health = Health(RetrySettings(jitter=0, pause_after=2))
    health.failed(object(), 1, 0, reason="x")
    health.succeeded()
    assert health.failed(object(), 1, 0, reason="x").action is Action.RETRY
    assert not health.paused


def test_permanent_failure_ends_a_pause() -> None:
    health = Health(RetrySettings(jitter=0, pause_after=1))
    health.failed(object(), 1, 0, reason="x")
    assert health.paused
    assert health.permanent("400") is True
    assert not health.paused and health.last_error == "400"


def test_marketo_schedule_3_retries_3_minutes_apart_then_probe_every_3_minutes() -> None:
    pool, retry = PRESETS["marketo"]
    assert (pool.batch_size, pool.linger, pool.interval, pool.timeout) == (500, 2.0, 2.0, 20.0)
    health = Health(retry)
    batch = object()
    now, times, actions = 0.0, [], []
    for attempts in range(1, 9):  # the destination is down for 8 attempts, then up
        times.append(now)
        verdict = health.failed(batch, attempts, now, reason="HTTP 503")
        actions.append(verdict.action)
        now = verdict.at
    assert times == [0, 180, 360, 540, 720, 900, 1080, 1260]
    assert actions[:3] == [Action.RETRY] * 3
    assert actions[3:] == [Action.PROBE] * 5  # paused after the first try and 3 retries
    assert health.paused
    assert health.succeeded() is True  # success re-enables the stream
    assert not health.paused
    # Never a dead letter for a transient failure, however long the outage.
    assert Action.DEAD_LETTER not in actions


def event(**kw: object) -> DrainEvent:
    fields: dict[str, object] = {
        "seq": 1,
        "key": "k",
        "stream": "activity",
        "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
        "munchkin_id": "123-ABC-456",
        "activity_type_id": 1,
        "source": "events",
        "occurred_at": None,
        "received_at": "2026-01-01T00:00:00.000Z",
        "raw": "{}",
    }
    fields.update(kw)
    return DrainEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("filters", "ev", "expected"),
    [
        ([], event(), True),
        ([Filter(streams=("audit",))], event(), False),
        ([Filter(streams=("audit", "activity"))], event(), True),
        ([Filter(types=("com.adobe.platform.marketo.activity.*",))], event(), True),
        ([Filter(types=("*.custom",))], event(), False),
        ([Filter(types=("*",))], event(type=None), False),
        ([Filter(munchkin_ids=("123-ABC-456",), activity_type_ids=(1, 2))], event(), True),
        ([Filter(munchkin_ids=("123-ABC-456",), activity_type_ids=(2,))], event(), False),
        ([Filter(activity_type_ids=(1,))], event(activity_type_id=None), False),
        ([Filter(sources=("io",))], event(), False),
        ([Filter(sources=("io",)), Filter(streams=("activity",))], event(), True),
        ([Filter(types=("[a-z]*",))], event(type="Com.x"), False),
    ],
)
def test_routing(filters: list[Filter], ev: DrainEvent, expected: bool) -> None:
    assert Route(filters).matches(ev) is expected
