"""Shape detection, dedup keys and extracted columns, from the contract's fixtures."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.core import decode_delivery, key_hash, legacy_type, stream_of
from streamd.errors import PayloadError
from tests.conftest import fixture_bytes

# fixture -> (shape, [(key, stream, type suffix, munchkin, activity type id, lead id, occurred)])
EXPECTED: dict[str, tuple[str, list[tuple[Any, ...]]]] = {
    "legacy_push": (
        "legacy",
        [
            ("8f1c9a52-3b7e-4c1d-a2f0-000000000101", "activity", "standard.visitwebpage",
             "123-ABC-456", 1, 4411, "2026-04-21T15:28:40.000Z"),
            ("8f1c9a52-3b7e-4c1d-a2f0-000000000102", "activity", "standard.changedatavalue",
             "123-ABC-456", 13, 4412, "2026-04-21T15:28:41.000Z"),
            ("8f1c9a52-3b7e-4c1d-a2f0-000000000103", "activity", "standard.newlead",
             "123-ABC-456", 12, 4413, "2026-04-21T15:28:42.000Z"),
            ("8f1c9a52-3b7e-4c1d-a2f0-000000000104", "activity", "standard.deletelead",
             "123-ABC-456", 37, 4400, "2026-04-21T15:28:43.000Z"),
        ],
    ),
    "lads_single": (
        "cloudevent",
        [("3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000001", "activity", "standard.openemail",
          "123-ABC-456", 10, 1234, "2026-05-02T09:14:01.000Z")],
    ),
    "audit_wrapper": (
        "wrapper",
        [("b5c0e3a4-6a0e-4a8f-9d55-0b7c2f000201", "audit", "audit.user.email",
          "123-ABC-456", None, None, "2024-07-11T13:20:42.755Z")],
    ),
    "audit_old_wrapper": (
        "old-wrapper",
        [("b77c743a-8e28-40f2-8aab-9541bbc85e68", "audit", "audit.user.email",
          "123-ABC-456", None, None, "2020-05-28T19:20:47.280Z")],
    ),
    "notification": (
        "wrapper",
        [("c9d8e7f6-1111-4c2b-8a3d-000000000001", "notification",
          "notification.web_services", "123-ABC-456", None, None,
          "2021-05-27T15:22:37.489Z")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_shapes_keys_and_columns(name: str) -> None:
    shape, rows = EXPECTED[name]
    delivery = decode_delivery(fixture_bytes(name))
    assert delivery.shape == shape
    got = [
        (
            e.key,
            e.stream,
            e.type and e.type.split("marketo.", 1)[1].removeprefix("activity."),
            e.munchkin_id,
            e.activity_type_id,
            e.lead_id,
            e.occurred_at,
        )
        for e in delivery.events
    ]
    assert got == [tuple(r) for r in rows]
    for event in delivery.events:
        assert event.key_hash == key_hash(event.key)


def test_lads_batch_keys_and_custom_type() -> None:
    delivery = decode_delivery(fixture_bytes("lads_batch"))
    assert delivery.shape == "cloudevent"
    assert [e.key[-2:] for e in delivery.events] == ["10", "11", "12", "13", "14", "99"]
    custom = delivery.events[-1]
    assert custom.type == "com.adobe.platform.marketo.activity.custom"
    assert custom.activity_type_id == 100007
    assert {e.lead_id for e in delivery.events} == {2010, 2011, 2012, 2013, 2014, 2099}


def test_raw_is_exactly_the_bytes_received() -> None:
    body = fixture_bytes("lads_batch")
    delivery = decode_delivery(body)
    items = json.loads(body)
    assert len(items) == len(delivery.events)
    for event in delivery.events:
        # Each stored raw is a verbatim slice of the body, not a re-encoding.
        assert event.raw.encode() in body
        assert json.loads(event.raw) in items
    single = fixture_bytes("lads_single")
    assert decode_delivery(single).events[0].raw.encode() == single.strip()


def test_legacy_raw_is_each_activity_verbatim() -> None:
    body = fixture_bytes("legacy_push")
    activities = json.loads(body)["activities"]
    delivery = decode_delivery(body)
    assert delivery.message_id == "50021"
    for event, activity in zip(delivery.events, activities, strict=True):
        assert event.raw.encode() in body
        assert json.loads(event.raw) == activity


def test_challenge_post_is_not_an_event() -> None:
    delivery = decode_delivery(fixture_bytes("challenge_post"))
    assert delivery.shape == "challenge"
    assert delivery.events == []
    assert delivery.validation_url is not None
    assert delivery.validation_url.startswith("https://csm.adobe.io/")


def test_mixed_array_of_every_shape() -> None:
    parts = [
        fixture_bytes(n).strip() for n in ("lads_single", "audit_wrapper", "audit_old_wrapper")
    ]
    notification = json.loads(fixture_bytes("notification"))[0]
    legacy = fixture_bytes("legacy_push").strip()
    body = b"[" + b",".join([*parts, json.dumps(notification).encode(), legacy]) + b"]"
    delivery = decode_delivery(body)
    assert delivery.shape == "mixed"
    assert len(delivery.events) == 3 + 1 + 4
    assert [e.stream for e in delivery.events] == ["activity", "audit", "audit", "notification"] + [
        "activity"
    ] * 4


def test_migration_same_activity_by_both_paths_has_one_key() -> None:
    legacy = decode_delivery(fixture_bytes("legacy_push")).events[0]
    io_event = {
        "id": legacy.key,
        "specversion": "1.0",
        "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
        "data": {"munchkinId": "123-ABC-456", "leadId": "4411", "activityTypeId": 1},
    }
    pushed = decode_delivery(json.dumps([io_event]).encode()).events[0]
    assert pushed.key == legacy.key
    assert pushed.key_hash == legacy.key_hash
    assert pushed.type == legacy.type
    assert pushed.lead_id == legacy.lead_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is empty"),
        (b"   \n", "the body is empty"),
        (b"{", "not valid JSON"),
        (b'{"id": "a",}', "trailing comma"),
        (b"[1, 2]", "$[0]: expected an object (an event), got a number"),
        (b'["x"]', "$[0]: expected an object (an event), got a string"),
        (b"[null]", "$[0]: expected an object (an event), got null"),
        (b"42", "expected a JSON object or an array"),
        (b'"text"', "expected a JSON object or an array"),
        (b"{}", "$: not a known delivery shape"),
        (b'{"type": "x", "data": {}}', "$: not a known delivery shape"),
        (b'[{"id": "a"}, {"type": "b", "specversion": "1.0"}]', "$[1]: the event has no id"),
        (b'{"eventid": "", "specversion": "1.0"}', "$: the event has no id"),
        (b'{"event": {"body": {"type": "x"}}}', "$: the event has no id"),
        (b'{"event": 5, "eventid": "a"}', "$.event: expected an object"),
        (b'{"event": {"body": []}, "eventid": "a"}', "$.event.body: expected an object"),
        (b'{"id": true, "specversion": "1.0"}', "$.id: an event id must be a string"),
        (b'{"id": ["a"], "specversion": "1.0"}', "$.id: an event id must be a string"),
        (b'{"id": "' + b"k" * 600 + b'"}', "longer than 512 characters"),
        (b'{"activities": [{"leadId": 1}]}', "$.activities[0]: the activity has no marketoGUID"),
        (b'{"activities": [{"marketoGUID": "a"}, 7]}', "$.activities[1]: expected an object"),
        (b'{"activities": {"a": 1}}', "$.activities: expected `array`"),
        (b'[{"validationUrl": "https://x"}]', "a validation request cannot be part of a batch"),
        (b'{"validationUrl": 5}', "$.validationUrl: expected a non-empty string"),
        (b'{"id": "a", "x": "\xff"}', "invalid UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
    ],
)
def test_bad_bodies_are_rejected_with_a_precise_message(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_delivery(body)
    assert message in str(info.value)
    assert info.value.status_hint == 400


def test_a_batch_with_one_bad_event_is_rejected_whole() -> None:
    good = json.loads(fixture_bytes("lads_batch"))
    del good[3]["id"], good[3]["eventid"]
    with pytest.raises(PayloadError, match=r"\$\[3\]: the event has no id"):
        decode_delivery(json.dumps(good).encode())


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # Unknown, odd or missing fields are stored as they are, never rejected.
        ({"id": "a"}, ("other", None, None, None, None)),
        ({"id": 17, "type": 5, "data": "text"}, ("other", None, None, None, None)),
        (
            {"id": "a", "type": "com.adobe.platform.marketo.activity.custom",
             "data": {"leadId": "x12", "activityTypeId": "100001", "munchkinId": 5}},
            ("activity", None, 100001, None, None),
        ),
        (
            {"id": "a", "type": "t", "time": "2024-07-11 13:20:42.755", "data": [1]},
            ("other", None, None, None, "2024-07-11T13:20:42.755Z"),
        ),
        (
            {"event_id": "e", "event": {"type": "com.adobe.platform.marketo.notification.x"}},
            ("notification", None, None, None, None),
        ),
        ({"id": "a", "data": {"leadId": 2**70}}, ("other", None, None, None, None)),
        ({"id": "a", "data": {"leadId": True}}, ("other", None, None, None, None)),
    ],
)  # fmt: skip
def test_lenient_extraction(item: dict[str, Any], expected: tuple[Any, ...]) -> None:
    event = decode_delivery(json.dumps(item).encode()).events[0]
    assert (event.stream, event.munchkin_id, event.activity_type_id, event.lead_id,
            event.occurred_at) == expected  # fmt: skip


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ({"eventid": "w", "event": {"body": {"id": "inner"}}}, "inner"),
        ({"eventid": "w", "event": {"body": {}}}, "w"),
        ({"eventid": "w", "event_id": "o", "event": {"body": {}}}, "w"),
        ({"event_id": "o", "event": {"id": "inner"}}, "inner"),
        ({"event_id": "o", "event": {}}, "o"),
        ({"eventid": "top", "id": "ce", "specversion": "1.0"}, "ce"),
        ({"eventid": "top", "specversion": "1.0"}, "top"),
        ({"id": 123}, "123"),
    ],
)
def test_dedup_key_rule(item: dict[str, Any], key: str) -> None:
    assert decode_delivery(json.dumps(item).encode()).events[0].key == key


def test_stream_and_legacy_type_helpers() -> None:
    assert stream_of("com.adobe.platform.marketo.audit.user.email") == "audit"
    assert stream_of(None) == "other"
    assert (
        legacy_type("Visit Webpage", 1)
        == "com.adobe.platform.marketo.activity.standard.visitwebpage"
    )
    assert legacy_type("Attended Webinar", 100007) == "com.adobe.platform.marketo.activity.custom"
    assert legacy_type(None, None) is None


def test_key_hash_is_stable_signed_64_bit() -> None:
    assert key_hash("a") == key_hash("a")
    assert key_hash("a") != key_hash("b")
    assert all(-(2**63) <= key_hash(str(i)) < 2**63 for i in range(1000))
    # The hash is stored in every journal's dedup index: pinned, so it can never drift.
    assert key_hash("a") == 4681665781835383343
    assert key_hash("00000000-0000-4000-8000-000000000000") == -6574885469085907612
    assert key_hash("Ünïcode-key") == 1812562016609661317


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "eventid", "event_id", "event", "body", "data", "activities",
                         "marketoGUID", "type", "time", "leadId", "validationUrl", "x"]),
        children,
        max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_decoded_or_rejected_cleanly(value: Any) -> None:
    body = msgspec.json.encode(value)
    try:
        delivery = decode_delivery(body)
    except PayloadError as exc:
        assert str(exc).startswith("$")
        return
    for event in delivery.events:
        assert event.key
        assert json.loads(event.raw) is not None or event.raw == "null"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_decoded_or_rejected_cleanly(body: bytes) -> None:
    try:
        decode_delivery(body)
    except PayloadError:
        pass
