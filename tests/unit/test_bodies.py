"""The http sink's body formats against the contract's fixtures: each body decodes through
streamd's own ingest decoder into the same event keys (and columns) it was built from."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from streamd.core import decode_delivery
from streamd.core.wire import EventRecord
from streamd.drain.bodies import CLOUDEVENT, JSON, Format, build, cloudevent, legacy_activity
from streamd.drain.sinks.base import DrainEvent
from tests.conftest import fixture_bytes

NOW = "2026-12-06T21:00:00Z"
IO_FIXTURES = ["lads_single", "lads_batch", "audit_wrapper", "audit_old_wrapper", "notification"]
ALL_FIXTURES = ["legacy_push", *IO_FIXTURES]


def journaled(*names: str) -> list[DrainEvent]:
    """The fixtures' events as the drain reads them from the journal."""
    out: list[DrainEvent] = []
    for name in names:
        for record in decode_delivery(fixture_bytes(name)).events:
            out.append(drain_event(record, len(out) + 1, name))
    return out


def drain_event(record: EventRecord, seq: int, source: str) -> DrainEvent:
    return DrainEvent(
        seq=seq,
        key=record.key,
        stream=record.stream,
        type=record.type,
        munchkin_id=record.munchkin_id,
        activity_type_id=record.activity_type_id,
        source=source,
        occurred_at=record.occurred_at,
        received_at="2026-05-02T09:14:05.000Z",
        raw=record.raw,
        lead_id=record.lead_id,
    )


def columns(record: EventRecord) -> tuple[object, ...]:
    """What the receiving journal extracts, besides the key."""
    return (record.stream, record.type, record.munchkin_id, record.activity_type_id,
            record.lead_id, record.occurred_at)  # fmt: skip


def received(fmt: Format, events: list[DrainEvent]) -> tuple[list[EventRecord], list[int]]:
    """What a streamd receiving the requests would journal; the refused seqs."""
    bodies = build(fmt, events, now=NOW)
    records = [r for request in bodies.requests for r in decode_delivery(request.body).events]
    return records, [seq for seq, _ in bodies.rejected]


@pytest.mark.parametrize("fmt", ["cloudevents", "cloudevents-single"])
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_cloudevents_keep_every_key_and_column(fmt: Format, name: str) -> None:
    events = journaled(name)
    records, rejected = received(fmt, events)
    assert rejected == []
    assert [r.key for r in records] == [e.key for e in events]
    original = decode_delivery(fixture_bytes(name)).events
    assert [columns(r) for r in records] == [columns(r) for r in original]


def test_cloudevents_carry_both_id_pairs_as_adobe_does_today() -> None:
    events = journaled(*ALL_FIXTURES)
    for event in events:
        item = orjson.loads(cloudevent(event, "forward-client"))
        assert item["eventid"] == item["event_id"]
        assert item["recipientclientid"] == item["recipient_client_id"]
    by_key = {e.key: orjson.loads(cloudevent(e)) for e in events}
    # The older wrapper keeps its own event_id (not the key, which is its CloudEvent id):
    old = by_key["b77c743a-8e28-40f2-8aab-9541bbc85e68"]
    assert old["eventid"] == old["event_id"] == "a1b2c3d4-7777-4bd1-9a1e-a1b2c3d4e5f6"
    assert "recipientclientid" not in old  # no recipient named, none configured
    # An event that names its recipient keeps it; the configured one fills only a gap.
    single = orjson.loads(cloudevent(events[4], "forward-client"))
    assert single["recipient_client_id"] == "streamd-test-client"


def test_an_io_event_goes_as_received_plus_the_missing_ids() -> None:
    [event] = journaled("lads_single")
    body = cloudevent(event)
    added = b'{"event_id":"3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000001",'
    added += b'"recipient_client_id":"streamd-test-client",'
    assert body.startswith(added)
    assert orjson.loads(b"{" + body[len(added) :]) == orjson.loads(event.raw)
    [both] = journaled("notification")
    assert cloudevent(both) == both.raw.encode()  # both pairs there: not a byte changed


def test_a_legacy_activity_becomes_the_cloudevent_adobe_would_send() -> None:
    event = journaled("legacy_push")[1]
    ce = orjson.loads(cloudevent(event))
    assert ce["id"] == ce["eventid"] == ce["event_id"] == "8f1c9a52-3b7e-4c1d-a2f0-000000000102"
    assert ce["specversion"] == "1.0"
    assert ce["type"] == "com.adobe.platform.marketo.activity.standard.changedatavalue"
    assert ce["source"] == "urn:marketo_activity_stream"
    assert ce["data"]["leadId"] == "4412"  # a string in I/O Events
    assert ce["data"]["munchkinId"] == "123-ABC-456"
    assert ce["data"]["campaignName"] == "Enrich titles"
    assert "marketoGUID" not in ce["data"]


def test_content_types_follow_the_contract() -> None:
    events = journaled("lads_batch")
    [batch] = build("cloudevents", events, now=NOW).requests
    assert batch.content_type == JSON and batch.body.startswith(b"[")
    singles = build("cloudevents-single", events, now=NOW).requests
    assert [r.content_type for r in singles] == [CLOUDEVENT] * len(events)
    assert [r.event_id for r in singles] == [e.key for e in events]
    assert all(r.body.startswith(b"{") for r in singles)


@pytest.mark.parametrize("name", ["legacy_push", "lads_single", "lads_batch"])
def test_legacy_push_keeps_every_activity_key_and_column(name: str) -> None:
    events = journaled(name)
    records, rejected = received("legacy-push", events)
    assert rejected == []
    assert [r.key for r in records] == [e.key for e in events]
    original = decode_delivery(fixture_bytes(name)).events
    assert [columns(r) for r in records] == [columns(r) for r in original]


def test_legacy_push_has_marketos_header_fields() -> None:
    events = journaled("legacy_push")
    [request] = build("legacy-push", events, now=NOW).requests
    push = orjson.loads(request.body)
    assert list(push) == [
        "sourceApplication", "munchkinId", "messageId", "messageCreatedDate", "activities"
    ]  # fmt: skip
    assert push["munchkinId"] == "123-ABC-456"
    assert push["messageId"] == "1"
    assert push["messageCreatedDate"] == NOW
    # Activities received from a legacy push go as they were received.
    original = orjson.loads(fixture_bytes("legacy_push"))["activities"]
    assert push["activities"] == original
    assert request.content_type == JSON


def test_legacy_push_from_io_events_makes_legacy_activities() -> None:
    [event] = journaled("lads_single")
    activity = orjson.loads(legacy_activity(event))
    assert activity["marketoGUID"] == event.key
    assert activity["leadId"] == 1234  # a number in the legacy push
    assert "munchkinId" not in activity


def test_legacy_push_refuses_what_it_cannot_carry_by_name() -> None:
    events = journaled(*ALL_FIXTURES)
    records, rejected = received("legacy-push", events)
    carried = [e for e in events if e.stream == "activity"]
    assert [r.key for r in records] == [e.key for e in carried]
    refused = {e.seq: e for e in events if e.stream != "activity"}
    assert sorted(rejected) == sorted(refused) and refused
    reasons = dict(build("legacy-push", events, now=NOW).rejected)
    seq = next(s for s, e in refused.items() if e.stream == "audit")
    assert reasons[seq] == (
        "format legacy-push carries lead activities only, not audit events "
        "(this one: com.adobe.platform.marketo.audit.user.email)"
    )


def test_legacy_push_one_request_per_munchkin_id() -> None:
    events = journaled("legacy_push", "lads_single")
    events[1] = msgspec.structs.replace(events[1], munchkin_id="999-ZZZ-999")
    bodies = build("legacy-push", events, now=NOW)
    assert [(orjson.loads(r.body)["munchkinId"], r.seqs) for r in bodies.requests] == [
        ("123-ABC-456", (1, 3, 4, 5)),
        ("999-ZZZ-999", (2,)),
    ]


def test_an_activity_without_data_is_refused_not_dropped() -> None:
    event = journaled("lads_single")[0]
    raw = '{"id": "x1", "specversion": "1.0", "type": "' + str(event.type) + '"}'  # no data
    bare = msgspec.structs.replace(event, raw=raw)
    bodies = build("legacy-push", [bare], now=NOW)
    assert bodies.requests == []
    assert bodies.rejected == [
        (1, "format legacy-push: the activity's CloudEvent has no data object to make "
            "a legacy activity of")
    ]  # fmt: skip
