"""The http sink's body formats through the drain, to a real receiver on loopback:
events a format cannot carry become dead letters with the reason; a request the
receiver refuses for good dead-letters its own events only; a transient failure
retries the whole batch."""

from __future__ import annotations

import orjson

from streamd.core import decode_delivery
from streamd.drain import RetrySettings, open_drain
from streamd.drain.bodies import Format
from streamd.drain.sinks.http import HttpSettings, HttpSink
from streamd.journal import Batch, Journal, utc_now
from tests.conftest import fixture_bytes

from .conftest import spec, wait_until
from .receiver import Answer, Receiver, running
from .test_http_sink import dead_letters

FAST = RetrySettings(backoff_base=0.02, backoff_cap=0.05, jitter=0.0, pause_after=50)


async def append_fixtures(journal: Journal, *names: str) -> list[str]:
    keys: list[str] = []
    for name in names:
        records = decode_delivery(fixture_bytes(name)).events
        await journal.append(Batch(name, utc_now(), "batch", records))
        keys += [r.key for r in records]
    return keys


def http_sink(url: str, fmt: Format) -> HttpSink:
    return HttpSink(HttpSettings(url=url, sink="fwd", format=fmt))


def received_keys(rx: Receiver) -> list[str]:
    """The event keys a streamd would journal from the confirmed requests."""
    return [
        record.key
        for request, answer in zip(rx.requests, rx.answers, strict=True)
        if answer.status < 300
        for record in decode_delivery(request.body).events
    ]


async def test_legacy_push_dead_letters_what_it_cannot_carry(journal: Journal) -> None:
    keys = await append_fixtures(journal, "legacy_push", "audit_wrapper", "lads_single")
    async with running(Receiver()) as rx:
        sink = http_sink(rx.url, "legacy-push")
        async with open_drain(journal, [spec("fwd", sink, full_events=True)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == len(keys), "delivered")
    audit = "b5c0e3a4-6a0e-4a8f-9d55-0b7c2f000201"
    assert sorted(received_keys(rx)) == sorted(k for k in keys if k != audit)
    assert all(r.headers["content-type"] == "application/json" for r in rx.requests)
    assert all("activities" in orjson.loads(r.body) for r in rx.requests)
    [(key, reason, _, _)] = dead_letters(journal)
    assert key == audit
    assert str(reason).startswith("format legacy-push carries lead activities only, not audit")


async def test_cloudevents_single_refusal_dead_letters_only_that_event(journal: Journal) -> None:
    keys = await append_fixtures(journal, "lads_batch")
    refused = 1  # the second request: 400 for good
    async with running(
        Receiver(lambda n: Answer(400, body=b"no") if n == refused else Answer())
    ) as rx:
        sink = http_sink(rx.url, "cloudevents-single")
        async with open_drain(journal, [spec("fwd", sink, full_events=True, retry=FAST)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == len(keys), "delivered")
    assert len(rx.requests) == len(keys)
    assert [r.headers["x-adobe-event-id"] for r in rx.requests] == keys
    assert all(
        r.headers["content-type"] == "application/cloudevents+json; charset=UTF-8"
        for r in rx.requests
    )
    assert received_keys(rx) == [k for i, k in enumerate(keys) if i != refused]
    [(key, reason, _, response)] = dead_letters(journal)
    assert (key, reason, response) == (keys[refused], "HTTP 400 from the destination", "no")


async def test_cloudevents_a_transient_failure_retries_the_batch(journal: Journal) -> None:
    keys = await append_fixtures(journal, "lads_batch", "audit_old_wrapper", "legacy_push")
    script = [Answer(503), Answer(200)]
    async with running(Receiver(lambda n: script[min(n, 1)])) as rx:
        sink = http_sink(rx.url, "cloudevents")
        spec_ = spec("fwd", sink, full_events=True, batch_size=100, linger=0.5, retry=FAST)
        async with open_drain(journal, [spec_]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == len(keys), "delivered")
    assert [r.body for r in rx.requests[:1]] == [r.body for r in rx.requests[1:2]]
    assert received_keys(rx) == keys
    assert dead_letters(journal) == []


async def test_cloudevents_signed_as_adobe_signs(journal: Journal) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from streamd.auth.adobe import presented, verify_rsa

    key = rsa.generate_private_key(65537, 2048)
    keys = await append_fixtures(journal, "lads_batch", "audit_wrapper")
    async with running(Receiver()) as rx:
        settings = HttpSettings(
            url=rx.url,
            sink="fwd",
            format="cloudevents",
            adobe_key=key,
            adobe_key_path="/prod/keys/pub-key-forward.pem",
        )
        async with open_drain(journal, [spec("fwd", HttpSink(settings), full_events=True)]) as d:
            await wait_until(lambda: d.statistics()[0].cursor == len(keys), "delivered")
    assert received_keys(rx) == keys
    for request in rx.requests:
        material = presented(
            {k.encode(): v.encode() for k, v in request.headers.items()}, allow_legacy=False
        )
        [(signature, path)] = material.signatures
        assert path == "/prod/keys/pub-key-forward.pem"
        assert verify_rsa(key.public_key(), request.body, signature)
        assert not verify_rsa(key.public_key(), request.body + b" ", signature)
