"""The emulator's event generator: deterministic, realistic, every documented shape."""

from __future__ import annotations

import datetime
from collections import Counter

import orjson
import pytest

from streamd.core import decode_delivery
from streamd.emit import catalog
from streamd.emit.generate import (
    ID_FIELDS,
    MAX_SEED,
    MAX_WORKERS,
    SHAPES,
    BatchMaker,
    event_ids,
    id_fields_on,
    iter_batches,
    take_batches,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_same_seed_same_bytes_other_worker_other_ids(shape: str) -> None:
    a = take_batches(shape, 50, 3, seed=7, worker=2)  # type: ignore[arg-type]
    assert a == take_batches(shape, 50, 3, seed=7, worker=2)  # type: ignore[arg-type]
    b = take_batches(shape, 50, 3, seed=7, worker=3)  # type: ignore[arg-type]
    c = take_batches(shape, 50, 3, seed=8, worker=2)  # type: ignore[arg-type]
    ids = [set().union(*(event_ids(shape, x) for x in run)) for run in (a, b, c)]  # type: ignore[arg-type]
    assert all(len(s) == 150 for s in ids)
    assert not ids[0] & ids[1] and not ids[0] & ids[2]


@pytest.mark.parametrize(
    ("shape", "decoded_shape"), [("legacy", "legacy"), ("io", "cloudevent"), ("mixed", "mixed")]
)
def test_streamd_decodes_every_shape_to_the_generated_keys(shape: str, decoded_shape: str) -> None:
    maker = BatchMaker(shape, seed=3, worker=0)  # type: ignore[arg-type]
    for _ in range(5):
        made = maker.make(40)
        delivery = decode_delivery(made.body)
        assert delivery.shape in (decoded_shape, "batch")
        assert [e.key for e in delivery.events] == made.keys
        assert event_ids(shape, made.body) == made.keys  # type: ignore[arg-type]
        assert all(e.occurred_at is not None for e in delivery.events)


def test_a_single_io_event_is_a_bare_cloudevent() -> None:
    made = BatchMaker("io", seed=1, worker=0).make(1, single=True)
    doc = orjson.loads(made.body)
    assert isinstance(doc, dict) and doc["id"] == doc["eventid"] == made.keys[0]
    assert decode_delivery(made.body).shape == "cloudevent"


@pytest.mark.parametrize("fields", ID_FIELDS)
def test_mixed_batches_hold_every_wrapper_with_the_documented_keys(fields: str) -> None:
    made = BatchMaker("mixed", seed=1, worker=0, fields=fields).make(400)  # type: ignore[arg-type]
    kinds: Counter[str] = Counter()
    for item, key in zip(orjson.loads(made.body), made.keys, strict=True):
        if "activities" in item:
            raise AssertionError("a legacy push inside an I/O batch")
        if "specversion" in item:
            kinds["cloudevent"] += 1
            assert item["id"] == item["eventid"] == key
        elif "specversion" in item["event"]:
            kinds["old-wrapper"] += 1
            assert item["event"]["id"] == key != item["eventid"]  # the CloudEvent id is the key
        elif item["event"]["body"]["type"].startswith(catalog.NOTIFICATION_TYPE_PREFIX):
            kinds["notification"] += 1
            assert item["eventid"] == key and "id" not in item["event"]["body"]
        else:
            kinds["audit"] += 1
            assert item["eventid"] == key and "id" not in item["event"]["body"]
            assert item["event"]["body"]["type"].startswith(catalog.AUDIT_TYPE_PREFIX)
    assert set(kinds) == {"cloudevent", "old-wrapper", "notification", "audit"}, kinds


@pytest.mark.parametrize("shape", ["io", "mixed"])
def test_both_pairs_carry_the_same_values_and_new_only_the_new_pair(shape: str) -> None:
    """Adobe's deliveries carry both pairs until the end of 2026, then only the new."""
    for fields in ID_FIELDS:
        maker = BatchMaker(shape, seed=4, worker=0, recipient="me", fields=fields)  # type: ignore[arg-type]
        made = maker.make(200)
        for item in orjson.loads(made.body):
            assert item["recipientclientid"] == "me"
            if fields == "both":
                assert item["event_id"] == item["eventid"]
                assert item["recipient_client_id"] == "me"
            else:
                assert "event_id" not in item and "recipient_client_id" not in item
        # Same events either way: only the id fields differ.
        assert made.keys == BatchMaker(shape, seed=4, worker=0).make(200).keys  # type: ignore[arg-type]
        delivery = decode_delivery(made.body)
        assert [e.key for e in delivery.events] == made.keys
        assert delivery.recipients == {"me"}


def test_a_single_event_with_both_pairs_is_what_adobes_sdk_checks() -> None:
    """SDK 4.1.0 reads the top-level recipient_client_id of a bare object."""
    made = BatchMaker("io", seed=1, worker=0, recipient="me", fields="both").make(1, single=True)
    doc = orjson.loads(made.body)
    assert doc["recipient_client_id"] == doc["recipientclientid"] == "me"
    assert doc["event_id"] == doc["eventid"] == doc["id"] == made.keys[0]


@pytest.mark.parametrize(
    ("day", "fields"),
    [
        (datetime.date(2026, 5, 2), "both"),
        (datetime.date(2026, 12, 31), "both"),
        (datetime.date(2027, 1, 1), "new"),
        (datetime.date(2031, 7, 1), "new"),
    ],
)
def test_adobe_sends_both_pairs_until_the_end_of_2026(day: datetime.date, fields: str) -> None:
    assert id_fields_on(day) == fields


def test_events_cover_the_documented_types_custom_ids_and_munchkins() -> None:
    types: Counter[int] = Counter()
    munchkins: Counter[str] = Counter()
    sizes = []
    for body in take_batches("legacy", 500, 60, seed=1, worker=0):
        doc = orjson.loads(body)
        munchkins[doc["munchkinId"]] += 1
        sizes.append(len(body) / len(doc["activities"]))
        for activity in doc["activities"]:
            types[activity["activityTypeId"]] += 1
            assert 2 <= len(activity["attributes"]) <= 4
    assert set(types) == {t for t, _, _ in catalog.ACTIVITY_TYPES}
    assert any(t >= 100000 for t in types)
    assert len(munchkins) >= 3
    assert 300 < sum(sizes) / len(sizes) < 800  # bytes per activity, as Marketo sends


def test_audit_and_notification_types_vary() -> None:
    doc = orjson.loads(BatchMaker("mixed", seed=2, worker=0).make(2000).body)
    bodies = [i["event"].get("body", i["event"]) for i in doc if "event" in i]
    types = {b["type"] for b in bodies}
    assert len([t for t in types if t.startswith(catalog.AUDIT_TYPE_PREFIX)]) >= 5
    assert {t.rsplit(".", 1)[1] for t in types if "notification" in t} == set(
        catalog.NOTIFICATION_KINDS
    )
    assert len({b["data"]["eventAction"] for b in bodies if "audit" in b["type"]}) >= 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": "xml", "seed": 1, "worker": 0}, "unknown shape"),
        ({"shape": "io", "seed": MAX_SEED, "worker": 0}, "seed must be"),
        ({"shape": "io", "seed": 1, "worker": MAX_WORKERS}, "worker must be"),
        ({"shape": "io", "seed": -1, "worker": 0}, "seed must be"),
        ({"shape": "io", "seed": 1, "worker": 0, "fields": "old"}, "unknown id fields"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchMaker(**kwargs)  # type: ignore[arg-type]


def test_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchMaker("io", seed=1, worker=0).make(0)
    with pytest.raises(ValueError, match="at least 1"):
        next(iter_batches("legacy", 0, seed=1, worker=0))
