"""The http sink against a real receiver on loopback: signing, retries, 429, 410, 400, hangs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trio

from streamd.core.headers import retry_after
from streamd.drain import RetrySettings, open_drain
from streamd.drain.policy import Kind
from streamd.drain.sinks.http import HttpSettings, HttpSink, classify, parse_secret
from streamd.errors import ConfigError
from streamd.journal import Journal

from .conftest import append, spec, wait_until
from .receiver import Answer, Receiver, running

KEY1 = b"k" * 32
KEY2 = b"second-secret-of-32-bytes-long!!"
FAST = RetrySettings(backoff_base=0.02, backoff_cap=0.05, jitter=0.0, pause_after=50)


def http_sink(url: str, **kw: object) -> HttpSink:
    return HttpSink(HttpSettings(url=url, sink="hook", **kw))  # type: ignore[arg-type]


def dead_letters(journal: Journal) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(journal.path)
    try:
        return conn.execute(
            "SELECT event_key, reason, attempts, last_response FROM dead_letters ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


async def test_batches_are_signed_with_every_secret(journal: Journal) -> None:
    await append(journal, [f"h{i}" for i in range(25)])
    async with running(Receiver()) as rx:
        sink = http_sink(
            rx.url,
            secrets=[KEY1, KEY2],
            bearer_token="tok-123",
            headers={"X-Tenant": "acme"},
        )
        async with open_drain(journal, [spec("hook", sink, batch_size=10, workers=1)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 25, "delivered")
    assert [i for r in rx.requests for i in r.ids] == [f"h{i}" for i in range(25)]
    first = rx.requests[0]
    assert first.headers["authorization"] == "Bearer tok-123"
    assert first.headers["x-tenant"] == "acme"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["webhook-id"] == "hook-1-10"
    signed = f"{first.headers['webhook-id']}.{first.headers['webhook-timestamp']}.".encode()
    signed += first.body
    expected = [
        "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
        for k in (KEY1, KEY2)
    ]
    assert first.headers["webhook-signature"].split(" ") == expected


async def test_5xx_and_connection_errors_are_retried_with_the_same_webhook_id(
    journal: Journal,
) -> None:
    await append(journal, ["r1", "r2"])
    script = [Answer(500, body=b"boom"), Answer(503), Answer(200)]
    async with running(Receiver(lambda n: script[min(n, 2)])) as rx:
        async with open_drain(journal, [spec("hook", http_sink(rx.url), retry=FAST)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 2, "delivered")
    assert [r.headers["webhook-id"] for r in rx.requests] == ["hook-1-2"] * 3
    assert dead_letters(journal) == []


async def test_nobody_listening_is_transient(journal: Journal) -> None:
    await append(journal, ["c1"])
    sink = http_sink("http://127.0.0.1:9/nothing-here")
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, pause_after=2, probe_interval=60)
    async with open_drain(journal, [spec("hook", sink, retry=retry)]) as d:
        await wait_until(lambda: d.statistics()[0].state == "auto-paused", "paused")
        assert "ConnectError" in (d.statistics()[0].last_error or "")
    assert dead_letters(journal) == []


async def test_429_retry_after_is_honoured(journal: Journal) -> None:
    await append(journal, ["t1"])
    script = [Answer(429, (("retry-after", "1"),)), Answer(200)]
    async with running(Receiver(lambda n: script[min(n, 1)])) as rx:
        async with open_drain(journal, [spec("hook", http_sink(rx.url), retry=FAST)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 1, "delivered")
    assert len(rx.requests) == 2
    # The backoff alone would retry after 0.02 s; the receiver asked for 1 s.
    assert rx.requests[1].at - rx.requests[0].at >= 1.0


async def test_a_hanging_receiver_times_out_and_is_retried(journal: Journal) -> None:
    await append(journal, ["w1"])
    script = [Answer(hang=True), Answer(200)]
    async with running(Receiver(lambda n: script[min(n, 1)])) as rx:
        sink = http_sink(rx.url, timeout=0.3)
        async with open_drain(journal, [spec("hook", sink, retry=FAST, timeout=0.3)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 1, "delivered after timeout")
            assert d.statistics()[0].last_error == "no answer within 0.3 s"
    assert len(rx.requests) == 2


async def test_410_disables_the_sink(journal: Journal) -> None:
    await append(journal, ["g1"])
    async with running(Receiver(lambda n: Answer(410, body=b"unsubscribed"))) as rx:
        async with open_drain(journal, [spec("hook", http_sink(rx.url), retry=FAST)]) as d:
            await wait_until(lambda: d.statistics()[0].state == "disabled", "disabled")
            await append(journal, ["g2"])
            await trio.sleep(0.1)
    assert len(rx.requests) == 1
    assert d.statistics()[0].cursor == 0
    assert dead_letters(journal) == []


async def test_400_dead_letters_the_batch_with_the_answer(journal: Journal) -> None:
    await append(journal, ["bad"])
    await append(journal, ["good"])
    script = [Answer(400, body=b'{"error":"schema"}'), Answer(200)]
    async with running(Receiver(lambda n: script[min(n, 1)])) as rx:
        sink = http_sink(rx.url)
        async with open_drain(journal, [spec("hook", sink, workers=1, batch_size=1)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 2, "past both")
    assert dead_letters(journal) == [
        ("bad", "HTTP 400 from the destination", 1, '{"error":"schema"}')
    ]
    assert rx.requests[1].ids == ["good"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, Kind.CONFIRMED),
        (204, Kind.CONFIRMED),
        (301, Kind.TRANSIENT),
        (400, Kind.PERMANENT),
        (401, Kind.PERMANENT),
        (404, Kind.PERMANENT),
        (408, Kind.TRANSIENT),
        (410, Kind.GONE),
        (413, Kind.PERMANENT),
        (429, Kind.TRANSIENT),
        (500, Kind.TRANSIENT),
        (503, Kind.TRANSIENT),
    ],
)
def test_classify(status: int, kind: Kind) -> None:
    assert classify(status, b"x" * 10_000, None, 0).kind is kind
    if kind is not Kind.CONFIRMED:
        assert len(classify(status, b"x" * 10_000, None, 0).response or "") == 2048


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after("120", now.timestamp()) == 120
    assert retry_after(later, now.timestamp()) == pytest.approx(90)
    assert retry_after("99999999999", 0) == 86_400
    assert retry_after("soon", 0) is None
    assert retry_after(None, 0) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "must look like whsec_"),
        ("whsec_!!!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ],
)
def test_bad_secrets(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_secret(text, "secrets.txt")
    assert parse_secret("whsec_" + base64.b64encode(KEY1).decode(), "x") == KEY1


async def test_a_hostile_huge_answer_is_read_only_in_part(journal: Journal) -> None:
    await append(journal, ["big"])
    huge = Answer(400, body=b"A" * 5_000_000)
    async with running(Receiver(lambda n: huge)) as rx:
        async with open_drain(journal, [spec("hook", http_sink(rx.url))]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == 1, "dead-lettered")
    (row,) = dead_letters(journal)
    assert str(row[3]) == "A" * 2048
