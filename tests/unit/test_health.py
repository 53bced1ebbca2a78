"""Stream health with an injected clock: silence, and the road to Adobe's Unstable."""

from __future__ import annotations

from streamd.service.health import StreamHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_silence_warns_once_per_episode() -> None:
    clock = Clock()
    health = StreamHealth(["legacy", "io"], silence_warning=600, clock=clock)
    assert health.check() == []
    clock.now += 601
    warnings = health.check()
    assert warnings == [
        "source legacy: no delivery accepted since streamd started 10 min "
        "(health.silence_warning is 10 min)",
        "source io: no delivery accepted since streamd started 10 min "
        "(health.silence_warning is 10 min)",
    ]
    assert health.check() == []  # once per episode
    health.observe("legacy", 200)
    assert health.silence("legacy") == 0
    clock.now += 1200
    assert health.check() == [
        "source legacy: no delivery accepted for 20 min (health.silence_warning is 10 min)"
    ]
    health.observe("legacy", 503)  # a refused delivery does not end the silence
    assert health.silence("legacy") == 1200


def test_failure_share_warns_before_adobe_would_mark_unstable() -> None:
    clock = Clock()
    health = StreamHealth(["io"], silence_warning=0, failure_warning_ratio=0.5, clock=clock)
    for _ in range(4):
        health.observe("io", 503)
    for _ in range(4):
        health.observe("io", 200)
    assert health.window("io") == (8, 4)
    assert health.check() == []  # under 10 attempts: Adobe does not judge yet
    health.observe("io", 401)
    health.observe("io", 401)
    (warning,) = health.check()
    assert warning.startswith("source io: 6 of 10 requests in 24 h were refused (60%)")
    assert "Adobe marks the registration Unstable" in warning
    assert health.check() == []  # at most once an hour
    clock.now += 3600
    assert len(health.check()) == 1


def test_the_window_is_24_hours() -> None:
    clock = Clock()
    health = StreamHealth(["io"], clock=clock)
    for _ in range(10):
        health.observe("io", 500)
    clock.now += 23 * 3600
    assert health.window("io") == (10, 10)
    clock.now += 3600
    assert health.window("io") == (0, 0)
    health.observe("io", 200)
    assert health.window("io") == (1, 0)


def test_unknown_sources_are_ignored() -> None:
    health = StreamHealth(["io"], clock=Clock())
    health.observe("nope", 500)
    assert health.window("nope") == (0, 0)
