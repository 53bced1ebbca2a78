"""Shape detection and normalisation: a request body in, journal records out.

Why one module of about 530 lines: each documented payload shape (legacy push,
CloudEvent single and batch, I/O Events envelopes) is a short function, and they
share the key rule and the error translation below; apart, each would import the
others' helpers. The wire types are in ``wire.py``.

Sans-IO: bytes in, :class:`Delivery` out, :class:`PayloadError` (status 400)
for anything that cannot be journaled whole. The dedup key rule is
CONTRACT.md's: the CloudEvent ``id`` when there is one, else the delivery's
``eventid``, else ``event_id``; for the legacy push each ``marketoGUID``.

Malformed is 400, always: the nesting depth is checked before any decoder can
recurse, and every error of a decoder (msgspec's, UTF-8's) is translated here into a
:class:`PayloadError` that names the JSON path of the field at fault. Nothing else
escapes on hostile bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from streamd.core.timeparse import MAX_TIMESTAMP_TEXT, normalise_timestamp
from streamd.core.wire import (
    CLOUDEVENT_DECODER,
    DATA_DECODER,
    ITEM_DECODER,
    ITEMS_DECODER,
    LEGACY_DECODER,
    LOOSE_EVENT_DECODER,
    LOOSE_ITEM_DECODER,
    MAX_DEPTH,
    RAW_DECODER,
    CloudEvent,
    Delivery,
    EventData,
    EventRecord,
    Item,
    check_depth,
    decode_failure,
    utf8_failure,
)
from streamd.errors import PayloadError, TooManyEvents

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY_LENGTH",
    "decode_delivery",
    "key_hash",
    "legacy_type",
    "normalise_item",
    "raw_text",
    "stream_of",
]

MAX_KEY_LENGTH = 512
_ACTIVITY_PREFIX = "com.adobe.platform.marketo.activity."
_STREAM_PREFIXES = (
    (_ACTIVITY_PREFIX, "activity"),
    ("com.adobe.platform.marketo.audit.", "audit"),
    ("com.adobe.platform.marketo.notification.", "notification"),
)
_NO_DATA = EventData()
_EMPTY_EVENT = CloudEvent()


_blake2b: Callable[..., Any] = hashlib.blake2b
_from_bytes: Callable[..., int] = int.from_bytes


def key_hash(
    key: str,
    _blake2b: Callable[..., Any] = _blake2b,
    _from_bytes: Callable[..., int] = _from_bytes,
) -> int:
    """Return the signed 64-bit hash of a dedup key (the journal's compact dedup index).

    Called once per event under the GIL: the two lookups are bound once (253 -> 213 µs
    per 500 keys, ``timeit`` on this VM), and the decoders' loops inline this same
    expression (no call per event). The value is stored: it must never change.
    """
    return _from_bytes(_blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def stream_of(event_type: str | None) -> str:
    """Classify an event type into ``activity``, ``audit``, ``notification`` or ``other``."""
    if event_type:
        for prefix, stream in _STREAM_PREFIXES:
            if event_type.startswith(prefix):
                return stream
    return "other"


_LEGACY_TYPES: dict[str, str] = {}  # activityType -> type name; bounded below
_MAX_LEGACY_TYPES = 4096
_MAX_TYPE_NAME = 64  # real activityType names are short; a long one is not remembered
_CUSTOM_TYPE = _ACTIVITY_PREFIX + "custom"
# parse_timestamp reads no longer text; longer is not passed, so it is never cached:
# the parser's cache lives as long as the process, a sender's megabyte "time" must not.
_MAX_TIMESTAMP = MAX_TIMESTAMP_TEXT


def legacy_type(activity_type: object, activity_type_id: int | None) -> str | None:
    """The I/O Events type name of a legacy activity, so routing treats both paths alike."""
    if activity_type_id is not None and activity_type_id >= 100000:
        return _CUSTOM_TYPE
    if isinstance(activity_type, str) and activity_type:
        # A few dozen names recur in every batch: remembered, not rebuilt per event. Only
        # short ones: the table lives as long as the process, a sender's text does not.
        name = _LEGACY_TYPES.get(activity_type)
        if name is None:
            name = _ACTIVITY_PREFIX + "standard." + activity_type.lower().replace(" ", "")
            if len(_LEGACY_TYPES) < _MAX_LEGACY_TYPES and len(activity_type) <= _MAX_TYPE_NAME:
                _LEGACY_TYPES[activity_type] = name
        return name
    return None


def decode_delivery(body: bytes, *, max_events: int | None = None) -> Delivery:
    """Decode a request body into the events it carries.

    Raises :class:`PayloadError` (400) naming the JSON path and the problem when the body
    is not JSON, nests deeper than :data:`MAX_DEPTH` levels, an item is of no known shape,
    an event has no usable id, or a field streamd reads cannot be decoded (invalid UTF-8,
    a number out of range); :class:`TooManyEvents` (413) when it carries more than
    ``max_events`` events, found before any record is built. Nothing else escapes.
    """
    check_depth(body)  # before any decoder can recurse
    try:
        return _delivery(body, max_events)
    except RecursionError:
        # The depth is checked: only a caller already near Python's recursion limit
        # gets here, and the same bytes decode from a shallower stack.
        raise PayloadError("$: JSON nested too deeply to decode here") from None
    except (ValueError, UnicodeError, OverflowError) as exc:
        # A backstop: each decoder's errors are translated where they happen, with the
        # field's path. (msgspec's DecodeError is a ValueError.)
        raise PayloadError(f"$: cannot decode the body: {exc}"[:300]) from None


def _delivery(body: bytes, max_events: int | None) -> Delivery:
    start = body[:64].lstrip()[:1]
    if start == b"[":
        raws = _decode(ITEMS_DECODER, body, "$")
        if not raws:
            return Delivery(shape="batch", events=[])
        if max_events is not None and len(raws) > max_events:
            raise _too_many(max_events)  # an item is an event (a legacy push: at least none)
        events: list[EventRecord] = []
        shapes: set[str] = set()
        recipients: set[str] = set()
        for index, raw in enumerate(raws):
            path = f"$[{index}]"
            item = _decode_item(raw, path)
            if item.validationUrl is not None and _is_challenge(item):
                raise PayloadError(f"{path}: a validation request cannot be part of a batch")
            shapes.add(_collect(item, raw, path, events, max_events))
            if item.recipientclientid is not None or item.recipient_client_id is not None:
                _recipients(item, recipients)
        shape = shapes.pop() if len(shapes) == 1 else "mixed"
        return Delivery(shape=shape, events=events, recipients=frozenset(recipients))
    if start == b"{":
        raw = _decode(RAW_DECODER, body, "$")
        item = _decode_item(raw, "$")
        if item.validationUrl is not None and _is_challenge(item):
            if not isinstance(item.validationUrl, str) or not item.validationUrl:
                raise PayloadError("$.validationUrl: expected a non-empty string")
            return Delivery(shape="challenge", events=[], validation_url=item.validationUrl)
        events = []
        shape = _collect(item, raw, "$", events, max_events)
        message_id = item.messageId if shape == "legacy" else None
        named: set[str] = set()
        _recipients(item, named)
        return Delivery(
            shape=shape,
            events=events,
            message_id=None if message_id is None else str(message_id)[:200],
            recipients=frozenset(named),
        )
    if not body.strip():
        raise PayloadError("$: the body is empty; expected a JSON object or array")
    # Let msgspec name the exact position of the problem.
    _decode(RAW_DECODER, body, "$")
    raise PayloadError("$: expected a JSON object or an array of objects")


def normalise_item(raw: msgspec.Raw, path: str, *, checked: bool = False) -> list[EventRecord]:
    """The records of one item (a CloudEvent, a wrapper, a legacy push), as in a delivery.

    ``checked``: the caller has run :func:`~streamd.core.wire.check_depth` on JSON that
    holds ``raw`` (a whole page), so it is not read again. Raises :class:`PayloadError`
    naming ``path`` when the item nests deeper than :data:`MAX_DEPTH` levels, has no known
    shape, or an event of it has no usable id or cannot be decoded.
    """
    if not checked:
        check_depth(bytes(raw), where=path)
    out: list[EventRecord] = []
    try:
        _collect(_decode_item(raw, path), raw, path, out, None)
    except RecursionError:
        raise PayloadError(f"{path}: JSON nested too deeply to decode here") from None
    except (ValueError, UnicodeError, OverflowError) as exc:  # the backstop, as above
        raise PayloadError(f"{path}: cannot decode the event: {exc}"[:300]) from None
    return out


def raw_text(raw: msgspec.Raw, path: str) -> str:
    """The JSON of ``raw`` as text; :class:`PayloadError` naming the field when not UTF-8."""
    return _utf8(raw, path)


def _too_many(max_events: int) -> TooManyEvents:
    return TooManyEvents(
        f"$: more than {max_events} events in one request (server.max_events_per_request)"
    )


def _recipients(item: Item, into: set[str]) -> None:
    for value in (item.recipientclientid, item.recipient_client_id):
        if value is not None:
            # A non-string never equals a configured client id; keep it visible as such.
            into.add(value if isinstance(value, str) else repr(value))


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | msgspec.Raw, path: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, data, path) from None


def _at_root(exc: msgspec.ValidationError) -> bool:
    """True when the value itself is of the wrong type (not one of its members)."""
    return " - at `" not in str(exc)


def _decode_item(raw: msgspec.Raw, path: str) -> Item:
    """One typed pass for the documented shapes; the loose path for odd nested types."""
    try:
        return ITEM_DECODER.decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, raw, path) from None
    try:
        loose = LOOSE_ITEM_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        if _at_root(exc):
            raise PayloadError(f"{path}: expected an object (an event), got {_kind(raw)}") from None
        raise decode_failure(exc, raw, path) from None  # a number out of range, say
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, raw, path) from None
    activities = None
    if loose.activities:
        activities = _decode(ITEMS_DECODER, loose.activities, path + ".activities")
    return Item(
        id=loose.id,
        type=loose.type,
        time=loose.time,
        specversion=loose.specversion,
        data=_soft_data(loose.data, path + ".data"),
        eventid=loose.eventid,
        event_id=loose.event_id,
        event=_loose_event(loose.event, path + ".event", "an object") if loose.event else None,
        activities=activities,
        munchkinId=loose.munchkinId,
        messageId=loose.messageId,
        validationUrl=loose.validationUrl,
        recipientclientid=loose.recipientclientid,
        recipient_client_id=loose.recipient_client_id,
    )


def _loose_event(raw: msgspec.Raw, path: str, expected: str) -> CloudEvent:
    try:
        return CLOUDEVENT_DECODER.decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, raw, path) from None
    try:
        loose = LOOSE_EVENT_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        if _at_root(exc):
            raise PayloadError(f"{path}: expected {expected}") from None
        raise decode_failure(exc, raw, path) from None
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, raw, path) from None
    body = None
    if loose.body:
        body = _loose_event(loose.body, path + ".body", "an object (a CloudEvent)")
    return CloudEvent(
        id=loose.id,
        type=loose.type,
        time=loose.time,
        data=_soft_data(loose.data, path + ".data"),
        body=body,
    )


def _soft_data(raw: msgspec.Raw, path: str) -> EventData | None:
    """``data`` when it is an object; otherwise nothing to extract (never an error).

    A member of it that cannot be decoded (invalid UTF-8, a number out of range) is
    malformed JSON, not an odd type: :class:`PayloadError`.
    """
    if not raw:
        return None
    try:
        return DATA_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        if _at_root(exc):
            return None
        raise decode_failure(exc, raw, path) from None
    except msgspec.DecodeError as exc:
        raise decode_failure(exc, raw, path) from None


def _kind(raw: msgspec.Raw) -> str:
    first = memoryview(raw)[:1].tobytes()
    return {
        b"[": "an array",
        b'"': "a string",
        b"n": "null",
        b"t": "a boolean",
        b"f": "a boolean",
    }.get(first, "a number")


def _is_challenge(item: Item) -> bool:
    # A validation POST is {"validationUrl": ...} and carries no event.
    return (
        item.eventid is None
        and item.event_id is None
        and item.id is None
        and not item.event
        and not item.activities
    )


def _collect(
    item: Item, raw: msgspec.Raw, path: str, out: list[EventRecord], max_events: int | None
) -> str:
    """Append the events of one top-level item to ``out``; return the item's shape."""
    if item.activities is not None:
        _collect_legacy(item, raw, path, out, max_events)
        return "legacy"
    if item.event is not None:
        if item.event.body is not None:
            out.append(_record(item.event.body, item, raw, path, ".event.body.id"))
            return "wrapper"
        out.append(_record(item.event, item, raw, path, ".event.id"))
        return "old-wrapper"
    if item.id is not None or item.specversion is not None or item.eventid is not None:
        # The item is its own event: it has the four fields _record reads.
        out.append(_record(item, item, raw, path, ".id"))
        return "cloudevent"
    if item.event_id is not None:
        out.append(_record(_EMPTY_EVENT, item, raw, path, ".id"))
        return "old-wrapper"
    raise PayloadError(
        f"{path}: not a known delivery shape; expected a CloudEvent (with id), "
        'an {"eventid", "event": {"body"}} wrapper, an {"event_id", "event"} wrapper '
        'or a legacy push with "activities"'
    )


def _record(
    event: CloudEvent | Item, item: Item, raw: msgspec.Raw, path: str, id_path: str
) -> EventRecord:
    # Once per event: the common cases (a string id, int columns, a known type) are taken
    # inline, without a call; the JSON paths are built only for an error message.
    key = event.id
    if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
        key = _key(key, path + id_path)
        if key is None:
            key = _key(item.eventid, path + ".eventid")
        if key is None:
            key = _key(item.event_id, path + ".event_id")
        if key is None:
            raise PayloadError(
                f"{path}: the event has no id (none of id, eventid, event_id); "
                "it cannot be deduplicated"
            )
    event_type = event.type
    if type(event_type) is str:
        stream = _STREAMS.get(event_type) or _stream(event_type)
    else:
        event_type, stream = None, "other"
    data = event.data or _NO_DATA
    occurred = None
    if stream == "activity":
        when = data.activityDate
        if type(when) is str and len(when) <= _MAX_TIMESTAMP:
            occurred = normalise_timestamp(when)
    if occurred is None:
        when = event.time
        if type(when) is str and len(when) <= _MAX_TIMESTAMP:
            occurred = normalise_timestamp(when)
    munchkin_id = data.munchkinId
    type_id = data.activityTypeId
    if type(type_id) is not int or not _I64 <= type_id < -_I64:
        type_id = _integer(type_id)
    lead_id = data.leadId
    if type(lead_id) is not int or not _I64 <= lead_id < -_I64:
        lead_id = _integer(lead_id)
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_failure(bytes(raw), exc.start, path) from None
    return EventRecord(
        key,
        _from_bytes(_blake2b(key.encode(), digest_size=8).digest(), "big", signed=True),
        stream,
        event_type,
        munchkin_id[:200] if type(munchkin_id) is str and munchkin_id else None,
        type_id,
        lead_id,
        occurred,
        text,
    )


_STREAMS: dict[str, str] = {}  # event type -> stream; bounded like _LEGACY_TYPES


def _stream(event_type: str) -> str:
    stream = stream_of(event_type)
    if len(_STREAMS) < _MAX_LEGACY_TYPES and len(event_type) <= 2 * _MAX_TYPE_NAME:
        _STREAMS[event_type] = stream
    return stream


def _collect_legacy(
    item: Item, raw: msgspec.Raw, path: str, out: list[EventRecord], max_events: int | None
) -> None:
    # Up to thousands of activities per body: as in _record, the common cases inline.
    activities = item.activities or []
    if max_events is not None and len(out) + len(activities) > max_events:
        raise _too_many(max_events)  # before a record is built
    try:
        # The push around the activities (its sourceApplication, say) is not stored, but
        # malformed all the same: one check of the whole (14 µs for 250 kB, the decoder's
        # ASCII path), and each activity's text below is then known to be valid.
        str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_failure(bytes(raw), exc.start, path) from None
    munchkin_id = _text(item.munchkinId)
    decode = LEGACY_DECODER.decode
    types = _LEGACY_TYPES
    append = out.append
    blake2b, from_bytes = _blake2b, _from_bytes
    for index, one in enumerate(activities):
        try:
            activity = decode(one)
        except msgspec.ValidationError as exc:
            where = f"{path}.activities[{index}]"
            if _at_root(exc):
                raise PayloadError(
                    f"{where}: expected an object (an activity), got {_kind(one)}"
                ) from None
            raise decode_failure(exc, one, where) from None
        except msgspec.DecodeError as exc:
            raise decode_failure(exc, one, f"{path}.activities[{index}]") from None
        key = activity.marketoGUID
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            key = _key(key, f"{path}.activities[{index}].marketoGUID")
            if key is None:
                raise PayloadError(
                    f"{path}.activities[{index}]: the activity has no marketoGUID; "
                    "it cannot be deduplicated"
                )
        text = str(one, "utf-8")  # valid: checked above
        type_id = activity.activityTypeId
        if type(type_id) is not int or not _I64 <= type_id < -_I64:
            type_id = _integer(type_id)
        lead_id = activity.leadId
        if type(lead_id) is not int or not _I64 <= lead_id < -_I64:
            lead_id = _integer(lead_id)
        name = activity.activityType
        event_type = types.get(name) if type(name) is str else None
        if event_type is None or (type_id is not None and type_id >= 100000):
            event_type = legacy_type(name, type_id)
        when = activity.activityDate
        append(
            EventRecord(
                key,
                from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big", signed=True),
                "activity",
                event_type,
                munchkin_id,
                type_id,
                lead_id,
                normalise_timestamp(when)
                if type(when) is str and len(when) <= _MAX_TIMESTAMP
                else None,
                text,
            )
        )


_I64 = -(2**63)


def _key(value: object, path: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{path}: an event id must be a string, got {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > 1701:  # > 512 digits: no str() needed
        raise PayloadError(f"{path}: an event id longer than {MAX_KEY_LENGTH} characters")
    key = str(value)
    if len(key) > MAX_KEY_LENGTH:
        raise PayloadError(f"{path}: an event id longer than {MAX_KEY_LENGTH} characters")
    return key


def _text(value: object) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _utf8(raw: msgspec.Raw, path: str) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_failure(bytes(raw), exc.start, path) from None
