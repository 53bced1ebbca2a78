"""The senders' schedules: pure state machines, then the real sender loop on a fake clock.

The second half runs :func:`streamd.emit.sender.run_emit` under trio's ``MockClock``
(virtual time that jumps ahead whenever every task waits) with a scripted transport,
and records the virtual time of every attempt: days of protocol time in milliseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from streamd.emit.accounting import Ledger
from streamd.emit.http import HttpError, Response, Target
from streamd.emit.schedule import (
    DAY,
    HOUR,
    MINUTE,
    HealthPolicy,
    IoDelivery,
    IoPolicy,
    LegacyDelivery,
    LegacyPolicy,
    RegistrationHealth,
    io_retryable,
)
from streamd.emit.sender import EmitOptions, Transport, run_emit

# -- the pure machines -------------------------------------------------------------


def test_legacy_retries_three_times_three_minutes_apart_then_pauses() -> None:
    d = LegacyDelivery(LegacyPolicy(), now=0.0)
    now, waits, states = 0.0, [], []
    for _ in range(6):
        decision = d.after(now, 503)
        assert decision.action == "retry"
        waits.append(decision.wait)
        states.append(d.state)
        now += decision.wait
    assert waits == [180.0] * 6
    assert states == ["retrying"] * 3 + ["paused"] * 3
    assert d.after(now, 200).action == "ack" and d.state == "active"


@pytest.mark.parametrize("status", [None, 400, 401, 404, 413, 429, 500, 503, 505])
def test_legacy_treats_every_non_2xx_as_a_failure_to_retry(status: int | None) -> None:
    assert LegacyDelivery(LegacyPolicy(), 0.0).after(1.0, status).action == "retry"


def test_legacy_gives_up_after_seven_days_of_retention() -> None:
    d = LegacyDelivery(LegacyPolicy(), now=0.0)
    now, attempts = 0.0, 0
    while (decision := d.after(now, None)).action == "retry":
        now += decision.wait
        attempts += 1
    assert decision.action == "give_up" and "7-day" in decision.reason
    assert now == 7 * DAY  # the last attempt; one more wait would pass the retention
    assert attempts == 7 * DAY // 180


@pytest.mark.parametrize("status", [2, 200, 201, 204, 299])
def test_any_2xx_acknowledges(status: int) -> None:
    expected = "ack" if status >= 200 else "give_up"
    assert IoDelivery(IoPolicy(), 0.0).after(0.0, status).action == expected


def test_io_backs_off_1_2_4_8_then_every_15_minutes_for_24_hours() -> None:
    d = IoDelivery(IoPolicy(), now=0.0)
    now, waits = 0.0, []
    while (decision := d.after(now, 503)).action == "retry":
        waits.append(decision.wait)
        now += decision.wait
    assert waits[:6] == [1 * MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 15 * MINUTE, 15 * MINUTE]
    assert set(waits[4:]) == {15 * MINUTE}
    assert decision.action == "give_up" and "24 h" in decision.reason
    assert 24 * HOUR - 15 * MINUTE < now <= 24 * HOUR
    assert len(waits) == 4 + int((24 * HOUR - 15 * MINUTE) // (15 * MINUTE))


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (None, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (505, False),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (413, False),
        (301, False),
        (600, False),
    ],
)
def test_io_retries_only_429_and_5xx_but_505(status: int | None, retried: bool) -> None:
    assert io_retryable(status) is retried
    decision = IoDelivery(IoPolicy(), 0.0).after(0.0, status)
    assert decision.action == ("retry" if retried else "give_up")
    if not retried:
        assert "not retried" in decision.reason


def test_ten_attempts_80_percent_failed_make_a_registration_unstable() -> None:
    h = RegistrationHealth()
    states = [h.record(60.0 * i, ok=False) for i in range(10)]
    assert states == ["active"] * 9 + ["unstable"]
    assert h.unstable_since == 540.0


def test_a_registration_below_80_percent_failures_stays_active() -> None:
    h = RegistrationHealth()
    outcomes = [False] * 7 + [True] * 3  # 70% failed
    assert {h.record(60.0 * i, ok) for i, ok in enumerate(outcomes)} == {"active"}


def test_unstable_recovers_when_deliveries_succeed_again() -> None:
    h = RegistrationHealth()
    for i in range(10):
        h.record(60.0 * i, ok=False)
    assert h.state == "unstable"
    # 10 failed of 11, then of 12 (83%): still unstable; of 13 (77%): active again.
    assert [h.record(600.0 + i, ok=True) for i in range(3)] == ["unstable", "unstable", "active"]
    assert h.unstable_since is None


def test_unstable_for_24_hours_means_disabled_for_good() -> None:
    h = RegistrationHealth()
    t = 0.0
    while h.record(t, ok=False) != "disabled":
        t += 15 * MINUTE
        assert t < 3 * DAY
    assert h.unstable_since is not None and t - h.unstable_since >= 24 * HOUR
    assert t - h.unstable_since < 24 * HOUR + 15 * MINUTE
    assert h.record(t + 1, ok=True) == "disabled"  # re-enabling is manual


def test_old_failures_leave_the_24_hour_window() -> None:
    h = RegistrationHealth(HealthPolicy())
    states = [h.record(3 * HOUR * i, ok=False) for i in range(12)]  # 8 per 24 h at most
    assert set(states) == {"active"}


# -- the real sender loop, on a fake clock ------------------------------------------


@dataclass
class Script:
    """A scripted receiver: ``statuses`` answers in order (then 200), attempt log."""

    statuses: list[int | None]
    attempts: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)

    def connect(self, target: Target) -> Transport:
        return _FakeConnection(self)


class _FakeConnection:
    def __init__(self, script: Script) -> None:
        self.script = script

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response:
        self.script.attempts.append((trio.current_time(), method, dict(headers)))
        if method == "GET":  # the challenge
            value = path.split("challenge=", 1)[1]
            return Response(200, {}, value.encode())
        status = self.script.statuses.pop(0) if self.script.statuses else 200
        if status is None:
            raise HttpError("connection refused (scripted)")
        return Response(status, {}, b'{"accepted": 1, "duplicates": 0}')

    async def aclose(self) -> None:
        pass


def _posts(script: Script) -> list[tuple[float, dict[str, str]]]:
    return [(t, h) for t, m, h in script.attempts if m == "POST"]


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def _emit(script: Script, **kw: object) -> dict[str, object]:
    opts = EmitOptions(url="http://receiver.test/events", drain=10 * DAY, **kw)  # type: ignore[arg-type]
    return await run_emit(opts, connect=script.connect, ledger=Ledger(None))


ScriptFactory = Callable[[list[int | None]], Script]


@pytest.fixture
def script() -> ScriptFactory:
    return lambda statuses: Script(list(statuses))


async def test_legacy_sender_waits_3_minutes_pauses_and_resumes(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503, 503, 503, 503, 503, None, 200])
    summary = await _emit(s, mode="legacy", count=200, batch=100)
    times = [t for t, _ in _posts(s)]
    # batch 1: 7 attempts 180 s apart (3 retries, then paused retries every 180 s);
    # batch 2 waits behind it (ordered), then goes at the cadence of one per 2 s.
    assert _gaps(times) == [180.0] * 6 + [pytest.approx(0.0, abs=1e-6)]
    assert summary["events_acked"] == 200 and summary["retries"] == 6
    assert summary["pauses"] == 1 and summary["subscriptions_paused_at_end"] == 0
    assert summary["outcomes"] == {"200": 2, "503": 5, "connection": 1}


async def test_legacy_cadence_is_a_batch_every_2_seconds_per_subscription(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([])
    await _emit(s, mode="legacy", count=2000, batch=250, parallel=2)
    times = sorted(t for t, _ in _posts(s))
    assert len(times) == 8
    assert _gaps(times[::2]) == [2.0, 2.0, 2.0]


async def test_time_scale_divides_the_protocol_waits(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503, 503])
    await _emit(s, mode="legacy", count=100, batch=100, time_scale=60.0)
    assert _gaps([t for t, _ in _posts(s)]) == [3.0, 3.0]  # 180 s / 60


async def test_io_sender_backs_off_and_keeps_the_event_id(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503, 429, None, 500, 502, 504, 200])
    summary = await _emit(s, mode="io", shape="io", count=20, sign=False)
    posts = _posts(s)
    assert _gaps([t for t, _ in posts]) == [60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
    event_ids = {h["x-adobe-event-id"] for _, h in posts}
    delivery_ids = {h["x-adobe-delivery-id"] for _, h in posts}
    assert len(event_ids) == 1 and len(delivery_ids) == len(posts)
    assert [h.get("x-adobe-retry-count") for _, h in posts] == [None, "1", "2", "3", "4", "5", "6"]
    assert summary["events_acked"] == 20 and summary["events_given_up"] == 0
    # The challenge came before the first delivery, on the same URL.
    assert s.attempts[0][1] == "GET"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 505])
async def test_io_sender_drops_a_batch_on_a_final_status(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory, status: int
) -> None:
    s = script([status])
    summary = await _emit(s, mode="io", shape="io", count=40, sign=False)
    assert len(_posts(s)) == 2  # no retry of the dropped one; the next batch goes on
    assert summary["events_given_up"] == 20 and summary["events_acked"] == 20


async def test_io_sender_gives_up_after_24_hours(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503] * 1000)
    started = trio.current_time()
    summary = await _emit(s, mode="io", shape="io", count=20, sign=False)
    posts = _posts(s)
    assert posts[-1][0] - started <= 24 * HOUR
    assert len(posts) == 1 + 4 + int((24 * HOUR - 15 * MINUTE) // (15 * MINUTE))
    assert summary["events_given_up"] == 20
    assert "24 h" in next(iter(summary["give_up_reasons"]))  # type: ignore[call-overload]


async def test_unresolved_batches_are_counted_when_the_drain_ends(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503] * 10)
    opts = EmitOptions(url="http://r.test/e", mode="legacy", count=100, batch=100, drain=600.0)
    summary = await run_emit(opts, connect=s.connect, ledger=Ledger(None))
    assert summary["events_unresolved"] == 100 and summary["events_acked"] == 0
    assert len(_posts(s)) == 4  # t=0, 180, 360, 540; the drain ends at 600
    assert summary["pauses"] == 1 and summary["subscriptions_paused_at_end"] == 1


async def test_a_registration_failing_for_a_day_is_disabled_and_stops(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory
) -> None:
    s = script([503] * 100_000)
    started = trio.current_time()
    # One batch per protocol hour for up to 60 h; every delivery answered 503.
    summary = await _emit(
        s, mode="io", shape="io", batch=20, duration=60 * HOUR, io_cadence=HOUR, sign=False
    )
    times = [t - started for t, _ in _posts(s)]
    assert summary["registration_health"] == {"0": "disabled"}
    # Unstable after its 10th failed attempt (within the second hour), disabled 24 h
    # after that, then silent: the run ends long before its 60 h.
    assert 25 * HOUR <= times[-1] < 27 * HOUR
    assert summary["duration_s"] < 28 * HOUR  # type: ignore[operator]
    assert summary["events_given_up"] == summary["events_sent"]
    assert any("disabled" in reason for reason in summary["give_up_reasons"])  # type: ignore[attr-defined]


async def test_progress_lines_report_the_run_as_it_goes(
    autojump_clock: trio.testing.MockClock, script: ScriptFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="streamd.emit")
    s = script([])
    await _emit(s, mode="legacy", count=3000, batch=100, progress=9.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("after ")]
    # 30 batches at the 2 s cadence (t = 0, 2, ... 58); a line every 9 s (never at the
    # same instant as a batch, so the order of the two tasks cannot matter).
    assert len(lines) == 6
    assert lines[0].startswith("after 9 s: sent 500 events, acknowledged 500 (56/s lately)")
