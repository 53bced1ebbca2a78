"""Malformed is 400, always: every exception the decode path can meet on hostile bytes,
and the status the core answers it with (issue 13, found cases 2 and 5).

Each row names the foreign exception the bytes make a decoder raise (msgspec's
``DecodeError``/``ValidationError``, ``UnicodeDecodeError``, ``RecursionError``, ...),
checks that the bytes really do raise it in that decoder, then that the core answers a
:class:`PayloadError` (400), or :class:`TooManyEvents` (413) for the event cap, whose
message names the JSON path of the field at fault. Nothing else may escape.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd.core.journaling import PAGE_DEPTH, decode_page
from streamd.core.normalise import MAX_DEPTH, decode_delivery, normalise_item
from streamd.core.timeparse import _normalise_text
from streamd.core.wire import check_depth, json_path_at
from streamd.errors import PayloadError, TooManyEvents
from tests.conftest import fixture_bytes

LEGACY = fixture_bytes("legacy_push")
SINGLE = fixture_bytes("lads_single")
BIG = b"9" * 4301  # one digit more than msgspec (and int(str)) will take


def _legacy(old: bytes, new: bytes) -> bytes:
    assert old in LEGACY, old
    return LEGACY.replace(old, new, 1)


def _single(old: bytes, new: bytes) -> bytes:
    assert old in SINGLE, old
    return SINGLE.replace(old, new, 1)


GUID = b'"8f1c9a52-3b7e-4c1d-a2f0-000000000101"'
CE_ID = b'"id": "3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000001"'


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    """A CloudEvent whose ``data.x`` holds arrays, so the body is ``depth`` levels deep."""
    return b'{"id": "a", "data": {"x": ' + b"[" * (depth - 2) + inner + b"]" * (depth - 2) + b"}}"


# (row id, what the decoder raises on these bytes, the bytes, status, message fragment)
# The "raises" column: (decoder, the bytes it gets, the exception) or None when the
# exception is the core's own (a check, not a foreign error).
Raises = tuple[Callable[[bytes], Any], bytes, type[BaseException]] | None
_ANY = msgspec.json.Decoder().decode
_RAW = msgspec.json.Decoder(msgspec.Raw).decode


def _str(data: bytes) -> Any:
    return str(data, "utf-8")


TABLE: list[tuple[str, Raises, bytes, int, str]] = [
    # -- invalid UTF-8 in a string the core decodes: msgspec.DecodeError ------------------
    ("utf8-legacy-marketoGUID", (_ANY, b'"\xff"', msgspec.DecodeError),
     _legacy(GUID, b'"8f1c\xff"'), 400, "$.activities[0].marketoGUID: invalid UTF-8"),
    ("utf8-legacy-activityType", (_ANY, b'"\xff"', msgspec.DecodeError),
     _legacy(b'"Visit Webpage"', b'"Visit\xffWebpage"'), 400,
     "$.activities[0].activityType: invalid UTF-8"),
    ("utf8-legacy-activityDate", (_ANY, b'"\xff"', msgspec.DecodeError),
     _legacy(b'"2026-04-21T15:28:41Z"', b'"2026\xff"'), 400,
     "$.activities[1].activityDate: invalid UTF-8"),
    ("utf8-legacy-munchkinId", (_ANY, b'"\xff"', msgspec.DecodeError),
     _legacy(b'"123-ABC-456"', b'"123\xff"'), 400, "$.munchkinId: invalid UTF-8"),
    ("utf8-legacy-messageId", (_ANY, b'"\xff"', msgspec.DecodeError),
     _legacy(b'"50021"', b'"50\xff21"'), 400, "$.messageId: invalid UTF-8"),
    ("utf8-cloudevent-id", (_ANY, b'"\xff"', msgspec.DecodeError),
     _single(CE_ID, b'"id": "3a1f\xff"'), 400, "$.id: invalid UTF-8"),
    ("utf8-cloudevent-data-munchkinId", (_ANY, b'"\xff"', msgspec.DecodeError),
     _single(b'"123-ABC-456"', b'"\xff"'), 400, "$.data.munchkinId: invalid UTF-8"),
    ("utf8-wrapper-body-type", (_ANY, b'"\xff"', msgspec.DecodeError),
     fixture_bytes("audit_wrapper").replace(b'"com.adobe', b'"\xffcom.adobe', 1), 400,
     "$.event.body.type: invalid UTF-8"),
    ("utf8-loose-data-munchkinId", (_ANY, b'"\xff"', msgspec.DecodeError),
     b'{"event": 5, "id": "a", "data": {"munchkinId": "\xff"}}', 400,
     "$.data.munchkinId: invalid UTF-8"),
    ("utf8-loose-event-type", (_ANY, b'"\xff"', msgspec.DecodeError),
     b'{"eventid": "a", "event": {"data": 5, "type": "\xff"}}', 400,
     "$.event.type: invalid UTF-8"),
    ("utf8-loose-event-body-type", (_ANY, b'"\xff"', msgspec.DecodeError),
     b'{"eventid": "a", "event": {"data": 5, "body": {"type": "\xff"}}}', 400,
     "$.event.body.type: invalid UTF-8"),
    ("utf8-loose-legacy-marketoGUID", (_ANY, b'"\xff"', msgspec.DecodeError),
     b'{"data": 1, "activities": [{"marketoGUID": "\xff"}]}', 400,
     "$.activities[0].marketoGUID: invalid UTF-8"),
    ("utf8-validationUrl", (_ANY, b'"\xff"', msgspec.DecodeError),
     b'{"validationUrl": "https://x/\xff"}', 400, "$.validationUrl: invalid UTF-8"),
    ("utf8-overlong-slash", (_ANY, b'"\xc0\xaf"', msgspec.DecodeError),
     _legacy(GUID, b'"\xc0\xaf"'), 400, "$.activities[0].marketoGUID: invalid UTF-8"),
    ("utf8-encoded-surrogate", (_ANY, b'"\xed\xa0\x80"', msgspec.DecodeError),
     _single(CE_ID, b'"id": "\xed\xa0\x80"'), 400, "$.id: invalid UTF-8"),
    ("utf8-past-U+10FFFF", (_ANY, b'"\xf4\x90\x80\x80"', msgspec.DecodeError),
     _single(CE_ID, b'"id": "\xf4\x90\x80\x80"'), 400, "$.id: invalid UTF-8"),
    # -- invalid UTF-8 in a string the core skips: UnicodeDecodeError on the raw text ----
    ("utf8-skipped-legacy-attribute", (_str, b'"\xff"', UnicodeDecodeError),
     _legacy(b'"utm_source=ads"', b'"utm\xff"'), 400,
     "$.activities[0].attributes[0].value: invalid UTF-8"),
    ("utf8-skipped-cloudevent-source", (_str, b'"\xff"', UnicodeDecodeError),
     _single(b'"urn:marketo_activity_stream"', b'"urn:\xff"'), 400, "$.source: invalid UTF-8"),
    ("utf8-truncated-sequence", (_str, b'"\xe2\x82"', UnicodeDecodeError),
     _single(b'"Spring launch email"', b'"Spring \xe2\x82"'), 400,
     "$.data.primaryAttributeValue: invalid UTF-8"),
    ("utf8-in-a-member-name", (_str, b'"\xff"', UnicodeDecodeError),
     _single(b'"source"', b'"sour\xffce"'), 400, "$: invalid UTF-8"),
    # -- escapes msgspec refuses: lone UTF-16 surrogates ---------------------------------
    ("lone-high-surrogate-id", (_ANY, b'"\\ud800"', msgspec.DecodeError),
     _single(CE_ID, b'"id": "\\ud800"'), 400, "$.id: not valid JSON: a lone UTF-16 surrogate"),
    ("lone-high-surrogate-marketoGUID", (_ANY, b'"\\ud800"', msgspec.DecodeError),
     _legacy(GUID, b'"\\uD800x"'), 400, "$.activities[0].marketoGUID: not valid JSON"),
    ("lone-low-surrogate-skipped", (_RAW, b'"\\udc00"', msgspec.DecodeError),
     _legacy(b'"utm_source=ads"', b'"\\udc00"'), 400,
     "$.activities[0].attributes[0].value: not valid JSON"),
    ("high-surrogate-then-letter", (_RAW, b'"\\ud800\\u0041"', msgspec.DecodeError),
     _single(b'"Spring launch email"', b'"\\ud800\\u0041"'), 400,
     "$.data.primaryAttributeValue: not valid JSON"),
    # -- numbers out of range in a field the core reads: msgspec.ValidationError ----------
    ("legacy-leadId-1e999", (_ANY, b"1e999", msgspec.ValidationError),
     _legacy(b'"leadId": 4411', b'"leadId": 1e999'), 400,
     "$.activities[0].leadId: number out of range"),
    ("legacy-leadId--1e999", (_ANY, b"-1e999", msgspec.ValidationError),
     _legacy(b'"leadId": 4411', b'"leadId": -1e999'), 400,
     "$.activities[0].leadId: number out of range"),
    ("legacy-leadId-4301-digits", (_ANY, BIG, msgspec.ValidationError),
     _legacy(b'"leadId": 4411', b'"leadId": ' + BIG), 400,
     "$.activities[0].leadId: integer value out of range"),
    ("legacy-activityTypeId-1e999", (_ANY, b"1e999", msgspec.ValidationError),
     _legacy(b'"activityTypeId": 1,', b'"activityTypeId": 1e999,'), 400,
     "$.activities[0].activityTypeId: number out of range"),
    ("legacy-marketoGUID-4301-digits", (_ANY, BIG, msgspec.ValidationError),
     _legacy(GUID, BIG), 400, "$.activities[0].marketoGUID: integer value out of range"),
    ("cloudevent-id-4301-digits", (_ANY, BIG, msgspec.ValidationError),
     _single(CE_ID, b'"id": ' + BIG), 400, "$.id: integer value out of range"),
    ("cloudevent-id-1e999", (_ANY, b"1e999", msgspec.ValidationError),
     _single(CE_ID, b'"id": 1E400'), 400, "$.id: number out of range"),
    ("cloudevent-data-leadId-1e999", (_ANY, b"1e999", msgspec.ValidationError),
     _single(b'"leadId": "1234"', b'"leadId": 1e999'), 400, "$.data.leadId: number out of range"),
    ("cloudevent-data-activityTypeId-4301-digits", (_ANY, BIG, msgspec.ValidationError),
     _single(b'"activityTypeId": 10', b'"activityTypeId": -' + BIG), 400,
     "$.data.activityTypeId: integer value out of range"),
    ("loose-data-leadId-1e999", (_ANY, b"1e999", msgspec.ValidationError),
     b'{"event": 5, "id": "a", "data": {"leadId": 1e999}}', 400,
     "$.data.leadId: number out of range"),
    ("recipientclientid-4301-digits", (_ANY, BIG, msgspec.ValidationError),
     _single(b'"recipientclientid": "streamd-test-client"', b'"recipientclientid": ' + BIG),
     400, "$.recipientclientid: integer value out of range"),
    # -- forms of numbers JSON does not have: msgspec.DecodeError ------------------------
    ("leadId-NaN", (_ANY, b"NaN", msgspec.DecodeError),
     _legacy(b'"leadId": 4411', b'"leadId": NaN'), 400,
     "$.activities[0].leadId: not valid JSON"),
    ("leadId-Infinity", (_ANY, b"-Infinity", msgspec.DecodeError),
     _single(b'"leadId": "1234"', b'"leadId": -Infinity'), 400, "$.data.leadId: not valid JSON"),
    ("leadId-leading-zero", (_ANY, b"01", msgspec.DecodeError),
     _legacy(b'"leadId": 4411', b'"leadId": 04411'), 400, "$.activities[0].leadId: not valid JSON"),
    # -- ids the core refuses itself ----------------------------------------------------
    ("id-600-digits", None, _single(CE_ID, b'"id": ' + b"7" * 600), 400,
     "$.id: an event id longer than 512 characters"),
    ("id-huge-string", None, _single(CE_ID, b'"id": "' + b"k" * 3_000_000 + b'"'), 400,
     "$.id: an event id longer than 512 characters"),
    ("id-float", None, _single(CE_ID, b'"id": 1.5'), 400, "$.id: an event id must be a string"),
    # -- nesting: RecursionError in msgspec past Python's recursion limit -----------------
    ("depth-65-arrays", None, _nested(65), 400, "$: JSON nested deeper than 64 levels"),
    ("depth-65-objects", None, b'{"id": "a", "x": ' + b'{"a": ' * 64 + b"1" + b"}" * 64 + b"}",
     400, "$: JSON nested deeper than 64 levels"),
    ("depth-980", (_RAW, b"[" * 980 + b"]" * 980, RecursionError), _nested(980), 400,
     "$: JSON nested deeper than 64 levels"),
    ("depth-100000", (_RAW, b"[" * 100_000 + b"]" * 100_000, RecursionError),
     _nested(100_000), 400, "$: JSON nested deeper than 64 levels"),
    ("depth-100000-unclosed", (_RAW, b"[" * 100_000, RecursionError), b"[" * 100_000, 400,
     "$: JSON nested deeper than 64 levels"),
    ("depth-980-legacy-attribute", (_RAW, b"[" * 980 + b"]" * 980, RecursionError),
     _legacy(b'"utm_source=ads"', b"[" * 980 + b"]" * 980), 400,
     "$: JSON nested deeper than 64 levels"),
    # -- bodies that are not JSON at all ------------------------------------------------
    ("empty", None, b"", 400, "$: the body is empty"),
    ("whitespace", None, b" \r\n\t", 400, "$: the body is empty"),
    ("bom", (_RAW, b"\xef\xbb\xbf{}", msgspec.DecodeError), b"\xef\xbb\xbf" + SINGLE, 400,
     "$: not valid JSON"),
    ("nul-outside-strings", (_RAW, b"{\x00}", msgspec.DecodeError), b"\x00" + SINGLE, 400,
     "$: not valid JSON"),
    ("nul-inside-a-string", (_RAW, b'"a\x00"', msgspec.DecodeError),
     _legacy(b'"Visit Webpage"', b'"Visit\x00Webpage"'), 400,
     "$.activities[0].activityType: not valid JSON"),
    ("truncated-legacy", (_RAW, LEGACY[:-3], msgspec.DecodeError), LEGACY[:-3], 400,
     "not valid JSON: Input data was truncated"),
    ("truncated-in-an-activity", (_RAW, LEGACY[:400], msgspec.DecodeError), LEGACY[:400], 400,
     "$.activities[0]"),
    ("trailing-garbage", (_RAW, SINGLE + b"x", msgspec.DecodeError), SINGLE + b"x", 400,
     "not valid JSON"),
]  # fmt: skip

ACCEPTED: list[tuple[str, bytes, Callable[[Any], bool]]] = [
    # Valid JSON with odd values: stored as received, the column left empty.
    ("leadId-2**63", _legacy(b'"leadId": 4411', b'"leadId": 9223372036854775808'),
     lambda d: d.events[0].lead_id is None),
    ("leadId-4300-digits", _legacy(b'"leadId": 4411', b'"leadId": ' + BIG[:-1]),
     lambda d: d.events[0].lead_id is None),
    ("activityTypeId--0", _legacy(b'"activityTypeId": 1,', b'"activityTypeId": -0,'),
     lambda d: d.events[0].activity_type_id == 0),
    ("id-int-2**64", _single(CE_ID, b'"id": 18446744073709551616'),
     lambda d: d.events[0].key == "18446744073709551616"),
    ("id--0", _single(CE_ID, b'"id": -0'), lambda d: d.events[0].key == "0"),
    ("skipped-1e999",
     _single(b'"primaryAttributeValueId": 1234', b'"primaryAttributeValueId": 1e999'),
     lambda d: "1e999" in d.events[0].raw),
    ("surrogate-pair", _single(b'"Spring launch email"', b'"\\ud83d\\ude00"'),
     lambda d: "\\ud83d\\ude00" in d.events[0].raw),
    ("depth-64", _nested(64), lambda d: len(d.events) == 1),
    ("70-brackets-in-a-string", _single(b'"Spring launch email"', b'"' + b"[" * 70 + b'"'),
     lambda d: "[" * 70 in d.events[0].raw),
    ("70-brackets-after-escaped-quote",
     _single(b'"Spring launch email"', b'"\\"' + b"{" * 70 + b'"'),
     lambda d: "{" * 70 in d.events[0].raw),
    ("huge-string-skipped", _single(b'"Spring launch email"', b'"' + b"s" * 3_000_000 + b'"'),
     lambda d: len(d.events[0].raw) > 3_000_000),
]  # fmt: skip


def _reject(body: bytes, **kw: Any) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode_delivery(body, **kw)
    return info.value


@pytest.mark.parametrize(("row", "raises", "body", "status", "fragment"), TABLE,
                         ids=[row[0] for row in TABLE])  # fmt: skip
def test_each_decode_failure_is_a_payload_error_naming_the_field(
    row: str, raises: Raises, body: bytes, status: int, fragment: str
) -> None:
    if raises is not None:
        decoder, sample, exception = raises
        with pytest.raises(exception):
            decoder(sample)  # the foreign error the core has to translate
    for _ in range(2):  # the same verdict every time
        error = _reject(body)
        assert type(error) is PayloadError, row
        assert error.status_hint == status
        assert fragment in str(error), str(error)


@pytest.mark.parametrize(("row", "body", "check"), ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_valid_json_with_odd_values_is_accepted(
    row: str, body: bytes, check: Callable[[Any], bool]
) -> None:
    assert check(decode_delivery(body)), row


def test_every_field_of_every_fixture_with_invalid_utf8_is_refused_by_its_path() -> None:
    for name in ("legacy_push", "lads_single", "lads_batch", "audit_wrapper",
                 "audit_old_wrapper", "notification", "challenge_post"):  # fmt: skip
        body = fixture_bytes(name)
        for path, start in string_values(body):
            bad = body[: start + 1] + b"\xff" + body[start + 1 :]
            error = _reject(bad)
            assert type(error) is PayloadError
            assert str(error).startswith(path + ": invalid UTF-8"), (name, path, str(error))


def string_values(body: bytes) -> list[tuple[str, int]]:
    """(JSON path, offset of the opening quote) of every string value in ``body``.

    The fixtures have no escaped quotes: every pair of quotes is one string, and a string
    followed by a colon is a member name. json.loads keeps the order of both.
    """
    paths: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}")
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, f"{path}[{index}]")
        elif isinstance(value, str):
            paths.append(path)

    walk(json.loads(body), "$")
    assert b"\\" not in body
    quotes = [i for i, byte in enumerate(body) if byte == 0x22]
    starts = [
        start
        for start, end in zip(quotes[::2], quotes[1::2], strict=True)
        if body[end + 1 :].lstrip()[:1] != b":"
    ]
    return list(zip(paths, starts, strict=True))


# -- nesting: the verdict is the bytes', not the caller's stack's -------------------------


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


def _at_stack_depth(target: int, call: Callable[[], Any]) -> Any:
    if _stack_depth() >= target:
        return call()
    return _at_stack_depth(target, call)


def _verdict(body: bytes) -> str:
    try:
        return f"ok {len(decode_delivery(body).events)}"
    except PayloadError as exc:
        return f"{exc.status_hint} {exc}"


@pytest.mark.parametrize("depth", [64, 65, 980, 100_000])
def test_the_depth_verdict_is_stable_whatever_the_callers_stack(depth: int) -> None:
    body = _nested(depth)
    top = _verdict(body)
    assert top == ("ok 1" if depth <= MAX_DEPTH else "400 $: JSON nested deeper than 64 levels")
    # Deep inside a recursion, with room for the check's limit and little more: the JSON
    # of 980 levels was 200 or 503 depending on this before the check.
    room = MAX_DEPTH + 40
    deep = sys.getrecursionlimit() - room
    assert [_at_stack_depth(deep, lambda: _verdict(body)) for _ in range(3)] == [top] * 3


def test_check_depth_never_recurses() -> None:
    # 100 levels of room: check_depth on a million levels must not need any of it.
    deep = sys.getrecursionlimit() - 100
    for body in (b"[" * 1_000_000, b"{" * 500_000 + b"}" * 500_000, b'["' + b"[" * 10**6 + b'"]'):
        try:
            _at_stack_depth(deep, lambda body=body: check_depth(body))  # type: ignore[misc]
        except PayloadError:
            pass


def _lexed_depth(body: bytes) -> int:
    """Reference: the deepest nesting a JSON lexer reaches before its first stray byte."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
        elif byte not in b" ,:0123456789":
            break  # a decoder stops here
    return deepest


_brackety = st.lists(
    st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b'\\"', b"\\\\", b",", b"1", b"a"]),
    max_size=400,
).map(b"".join)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.integers(0, 80), _brackety, st.integers(0, 80))
def test_check_depth_is_exact_on_valid_json_and_never_lets_a_deeper_one_by(
    opens: int, middle: bytes, closes: int
) -> None:
    body = b"[" * opens + middle + b"]" * closes
    try:
        check_depth(body)
        accepted = True
    except PayloadError:
        accepted = False
    if accepted:
        assert _lexed_depth(body) <= MAX_DEPTH
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return
    assert accepted == (_depth_of(value) <= MAX_DEPTH)


def _depth_of(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            deepest = max(deepest, level)
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def test_strings_full_of_brackets_are_not_nesting() -> None:
    # A legit text with 70 '[' (and an escaped quote before more) is one string.
    check_depth(b'{"a": "' + b"[" * 70 + b'\\"' + b"{" * 70 + b'"}')
    check_depth(b'["\\\\", "' + b"[" * 200 + b'"]')  # an escaped backslash ends no string
    with pytest.raises(PayloadError):  # ... but brackets after a string's end do count
        check_depth(b'["\\\\"' + b"[" * 70 + b"]" * 70 + b"]")


def test_json_path_at_names_the_value_holding_a_byte() -> None:
    body = b'{"a": [1, {"b": "x", "c d": [0, "zz"]}], "e": {"f": 1}}'
    assert json_path_at(body, body.index(b"x")) == ".a[1].b"
    assert json_path_at(body, body.index(b"zz")) == '.a[1]["c d"][1]'
    assert json_path_at(body, body.index(b"1}}")) == ".e.f"
    assert json_path_at(body, 0) == ""


# -- the event cap (413) ------------------------------------------------------------------


def _tiny(count: int) -> bytes:
    return b"[" + b",".join(b'{"id":"e%d"}' % i for i in range(count)) + b"]"


@pytest.mark.parametrize(
    ("body", "cap", "accepted"),
    [
        (_tiny(10), 10, 10),
        (_tiny(11), 10, None),
        (_tiny(11), None, 11),
        (LEGACY, 4, 4),
        (LEGACY, 3, None),
        (b"[" + b",".join([LEGACY.strip()] * 3) + b"]", 11, None),  # 12 activities in 3 items
        (b"[" + b",".join([LEGACY.strip()] * 3) + b"]", 12, 12),
    ],
)
def test_more_events_than_the_cap_is_413_before_any_record(
    body: bytes, cap: int | None, accepted: int | None
) -> None:
    if accepted is not None:
        assert len(decode_delivery(body, max_events=cap).events) == accepted
        return
    error = _reject(body, max_events=cap)
    assert type(error) is TooManyEvents
    assert error.status_hint == 413
    assert str(error) == (
        f"$: more than {cap} events in one request (server.max_events_per_request)"
    )


def test_the_cap_refuses_a_big_body_of_tiny_events_before_building_records() -> None:
    body = _tiny(370_000)  # issue 13: 7.8 MB of {"id":...} took RSS from 54 to 376 MB
    assert len(body) > 5_000_000
    error = _reject(body, max_events=10_000)
    assert type(error) is TooManyEvents


# -- what a sender's text may not pin in memory -------------------------------------------


def test_long_texts_are_not_remembered_by_the_decoders_caches() -> None:
    from streamd.core import normalise

    before = _normalise_text.cache_info().currsize
    huge_type = "Visit " + "W" * 1_000_000
    body = msgspec.json.encode(
        {"activities": [{"marketoGUID": "g1", "activityType": huge_type,
                         "activityDate": "2026-04-21T15:28:40Z" + " " * 1_000_000}]}
    )  # fmt: skip
    event = decode_delivery(body).events[0]
    assert event.type is not None and event.type.endswith("visit" + "w" * 1_000_000)
    assert event.occurred_at is None
    assert huge_type not in normalise._LEGACY_TYPES
    assert _normalise_text.cache_info().currsize == before


# -- the pull's pages and normalise_item --------------------------------------------------


@pytest.mark.parametrize(
    ("page", "fragment"),
    [
        (b'{"events": [' + b"[" * PAGE_DEPTH + b"]" * PAGE_DEPTH + b"]}",
         "journal page: JSON nested deeper than 67 levels"),
        (b'{"events": [{"position": "p", "event": ' + b"[" * 100_000 + b"]}",
         "journal page: JSON nested deeper than 67 levels"),
        (b'{"events": [{"position": "\xff", "event": {}}]}',
         "journal page: $.events[0].position: invalid UTF-8"),
        (b'{"events": [{"position": 1e999, "event": {}}]}',
         "journal page: $.events[0].position: number out of range"),
        (b'{"events": [{"position": "p", "event": {"a": 1}', "journal page: $.events[0]"),
    ],
)  # fmt: skip
def test_a_hostile_journal_page_is_a_payload_error(page: bytes, fragment: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_page(page)
    assert type(info.value) is PayloadError
    assert fragment in str(info.value), str(info.value)


def test_an_event_of_a_page_with_a_number_out_of_range_is_kept_under_its_position() -> None:
    page = decode_page(b'{"events": [{"position": "p7", "event": {"id": 1e999}}]}')
    assert [r.key for r in page.records] == ["journal-position:p7"]
    assert page.unkeyed == ["p7"]


def test_normalise_item_checks_the_depth_itself() -> None:
    raw = msgspec.Raw(_nested(980))
    with pytest.raises(PayloadError, match=r"^\$\.x: JSON nested deeper than 64 levels$"):
        normalise_item(raw, "$.x")


# -- never anything but PayloadError, whatever the bytes ----------------------------------

_FIXTURES = [fixture_bytes(n) for n in ("legacy_push", "lads_single", "lads_batch",
             "audit_wrapper", "audit_old_wrapper", "notification", "challenge_post")]  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(_FIXTURES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["flip", "insert", "cut", "nest", "number"]))
        if kind == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            body[at:at] = draw(st.sampled_from(
                [b"\xff", b"\xc0\xaf", b"\\ud800", b'"', b"[", b"{", b"\x00", b"\\", b"1e999",
                 b"9" * 4400, b"-0", b"NaN"]))  # fmt: skip
        elif kind == "cut":
            del body[at:]
        elif kind == "nest":
            n = draw(st.sampled_from([63, 64, 65, 1000]))
            body[at:at] = b"[" * n + b"]" * n
        else:
            body[at:at] = draw(st.sampled_from([b"9223372036854775808", b"-9223372036854775809",
                                                b"1e308", b"0.0000001e-400"]))  # fmt: skip
    return bytes(body)


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(_mutated(), st.sampled_from([None, 1, 3, 10_000]))
def test_mutated_fixtures_decode_or_raise_only_payload_errors(body: bytes, cap: int | None) -> None:
    try:
        delivery = decode_delivery(body, max_events=cap)
    except TooManyEvents as exc:
        assert exc.status_hint == 413
        return
    except PayloadError as exc:
        assert exc.status_hint == 400
        assert str(exc).startswith("$"), str(exc)
        return
    for event in delivery.events:
        event.raw.encode()  # text that can be stored
        assert 0 < len(event.key) <= 512


@settings(max_examples=500, deadline=None, derandomize=True)
@given(_mutated())
def test_mutated_pages_decode_or_raise_only_payload_errors(event: bytes) -> None:
    page = b'{"events": [{"position": "p1", "event": ' + event + b"}]}"
    try:
        decode_page(page)
    except PayloadError:
        pass
