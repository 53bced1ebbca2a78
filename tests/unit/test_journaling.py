"""Journaling API pages and the HTTP headers the pull reads (sans-IO)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import msgspec
import orjson
import pytest

from streamd.core.headers import link, retry_after
from streamd.core.journaling import POSITION_KEY_PREFIX, UNDECODABLE_FIELD, decode_page
from streamd.core.normalise import decode_delivery
from streamd.errors import PayloadError
from tests.conftest import FIXTURES


def raw_page(body: bytes) -> bytes:
    """A page around the exact bytes of each item of a delivery (as the journal lists them)."""
    items = (
        [bytes(r) for r in msgspec.json.decode(body, type=list[msgspec.Raw])]
        if body.lstrip().startswith(b"[")
        else [body.strip()]
    )
    entries = b", ".join(
        b'{"position": "p%d", "event": %s}' % (i, item) for i, item in enumerate(items)
    )
    return b'{"events": [' + entries + b"]}"


def page(*events: object) -> bytes:
    return orjson.dumps(
        {
            "events": [{"position": f"p{i}", "event": e} for i, e in enumerate(events)],
            "_page": {"last": f"p{len(events) - 1}", "count": len(events)},
        }
    )


@pytest.mark.parametrize(
    "fixture",
    ["lads_single.json", "audit_wrapper.json", "audit_old_wrapper.json", "notification.json"],
)
def test_every_fixture_event_pulled_equals_it_pushed(fixture: str) -> None:
    body = (FIXTURES / fixture).read_bytes()
    pushed = decode_delivery(body).events
    pulled = decode_page(raw_page(body))
    assert pulled.records == pushed  # same key, columns and raw text: dedup works across
    assert pulled.last is not None and pulled.unkeyed == []


def test_a_legacy_push_in_a_page_gives_each_activity() -> None:
    body = (FIXTURES / "legacy_push.json").read_bytes()
    pulled = decode_page(raw_page(body))
    assert pulled.records == decode_delivery(body).events
    assert len(pulled.records) > 1


def test_events_without_a_usable_id_are_kept_under_their_position() -> None:
    pulled = decode_page(page({"type": "x"}, "text", {"id": True}, {"id": "ok"}))
    assert [r.key for r in pulled.records] == [
        POSITION_KEY_PREFIX + "p0",
        POSITION_KEY_PREFIX + "p1",
        POSITION_KEY_PREFIX + "p2",
        "ok",
    ]
    assert [r.raw for r in pulled.records[:3]] == ['{"type":"x"}', '"text"', '{"id":true}']
    assert pulled.unkeyed == ["p0", "p1", "p2"] and pulled.last == "p3"


def test_an_event_that_is_not_utf8_is_kept_whole_and_does_not_stall_the_pull() -> None:
    # Its bytes cannot be stored as JSON text; refusing the page would retry it forever.
    bad = b'{"id":"a\xff","type":"x"}'
    body = (
        b'{"events":[{"position":"p0","event":' + bad + b'},{"position":"p1","event":{"id":"ok"}}]}'
    )
    pulled = decode_page(body)
    assert [r.key for r in pulled.records] == [POSITION_KEY_PREFIX + "p0", "ok"]
    kept = orjson.loads(pulled.records[0].raw)
    assert base64.b64decode(kept[UNDECODABLE_FIELD]) == bad
    assert pulled.unkeyed == ["p0"] and pulled.last == "p1"


def test_an_empty_page() -> None:
    assert decode_page(b'{"events": []}').records == []
    assert decode_page(b"{}").last is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"events": [', "not valid JSON"),
        (b"[]", "expected `object`"),
        (b'{"events": {}}', "expected `array`"),
        (b'{"events": [{"event": {}}]}', "missing required field `position`"),
        (b'{"events": [{"position": 7, "event": {}}]}', "expected `str`"),
        (b'{"events": [{"position": "", "event": {}}]}', "non-empty"),
        (b'{"events": [{"position": "a\\nb", "event": {}}]}', "printable ASCII"),
        (orjson.dumps({"events": [{"position": "x" * 2000, "event": {}}]}), "longer than"),
        (b'{"events": [{"position": "p"}]}', "missing required field `event`"),
    ],
)
def test_a_malformed_page_is_refused_whole(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_page(body)


@pytest.mark.parametrize(
    ("header", "rel", "expected"),
    [
        ('</journal?since=p1&limit=2>; rel="next"', "next", "/journal?since=p1&limit=2"),
        ('<a>; rel="next", <b>; rel="validate"', "validate", "b"),
        ("<a>; rel=next", "next", "a"),
        ('<a>; title="x, y"; rel="prev next"', "next", "a"),
        ('<a>; rel="NEXT"', "next", "a"),
        ('<a>; rel="validate"', "next", None),
        ("", "next", None),
        (None, "next", None),
        ("garbage", "next", None),
        ("<a; rel=next", "next", None),
    ],
)
def test_link_header(header: str | None, rel: str, expected: str | None) -> None:
    assert link(header, rel) == expected


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert retry_after("7", now.timestamp()) == 7
    assert retry_after(" 7 ", now.timestamp()) == 7
    assert retry_after("99999999", now.timestamp()) == 86_400
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after(later, now.timestamp()) == pytest.approx(90)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert retry_after(earlier, now.timestamp()) == 0
    for bad in (None, "", "-1", "soon", "1.5"):
        assert retry_after(bad, now.timestamp()) is None
