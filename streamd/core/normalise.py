"""Shape detection and normalisation: a request body in, journal records out.

Sans-IO: bytes in, :class:`Delivery` out, :class:`PayloadError` (status 400)
for anything that cannot be journaled whole. The dedup key rule is
CONTRACT.md's: the CloudEvent ``id`` when there is one, else the delivery's
``eventid``, else ``event_id``; for the legacy push each ``marketoGUID``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from streamd.core.timeparse import normalise_timestamp
from streamd.core.wire import (
    CLOUDEVENT_DECODER,
    DATA_DECODER,
    ITEM_DECODER,
    ITEMS_DECODER,
    LEGACY_DECODER,
    LOOSE_EVENT_DECODER,
    LOOSE_ITEM_DECODER,
    RAW_DECODER,
    CloudEvent,
    Delivery,
    EventData,
    EventRecord,
    Item,
)
from streamd.errors import PayloadError

MAX_KEY_LENGTH = 512
_ACTIVITY_PREFIX = "com.adobe.platform.marketo.activity."
_STREAM_PREFIXES = (
    (_ACTIVITY_PREFIX, "activity"),
    ("com.adobe.platform.marketo.audit.", "audit"),
    ("com.adobe.platform.marketo.notification.", "notification"),
)
_NO_DATA = EventData()
_EMPTY_EVENT = CloudEvent()


def key_hash(
    key: str,
    _blake2b: Callable[..., Any] = hashlib.blake2b,
    _from_bytes: Callable[..., int] = int.from_bytes,
) -> int:
    """Return the signed 64-bit hash of a dedup key (the journal's compact dedup index).

    Called once per event under the GIL: the two lookups are bound once (253 -> 213 µs
    per 500 keys, ``timeit`` on this VM). The value is stored: it must never change.
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


def legacy_type(activity_type: object, activity_type_id: int | None) -> str | None:
    """The I/O Events type name of a legacy activity, so routing treats both paths alike."""
    if activity_type_id is not None and activity_type_id >= 100000:
        return _ACTIVITY_PREFIX + "custom"
    if isinstance(activity_type, str) and activity_type:
        # A few dozen names recur in every batch: remembered, not rebuilt per event.
        name = _LEGACY_TYPES.get(activity_type)
        if name is None:
            name = _ACTIVITY_PREFIX + "standard." + activity_type.lower().replace(" ", "")
            if len(_LEGACY_TYPES) < _MAX_LEGACY_TYPES:
                _LEGACY_TYPES[activity_type] = name
        return name
    return None


def decode_delivery(body: bytes) -> Delivery:
    """Decode a request body into the events it carries.

    Raises :class:`PayloadError` naming the JSON path and the problem when the
    body is not JSON, an item is of no known shape, or an event has no id.
    """
    start = body[:64].lstrip()[:1]
    if start == b"[":
        raws = _decode(ITEMS_DECODER, body, "$")
        if not raws:
            return Delivery(shape="batch", events=[])
        events: list[EventRecord] = []
        shapes: set[str] = set()
        recipients: set[str] = set()
        for index, raw in enumerate(raws):
            path = f"$[{index}]"
            item = _decode_item(raw, path)
            if item.validationUrl is not None and _is_challenge(item):
                raise PayloadError(f"{path}: a validation request cannot be part of a batch")
            shapes.add(_collect(item, raw, path, events))
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
        shape = _collect(item, raw, "$", events)
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


def normalise_item(raw: msgspec.Raw, path: str) -> list[EventRecord]:
    """The records of one item (a CloudEvent, a wrapper, a legacy push), as in a delivery.

    Raises :class:`PayloadError` naming ``path`` when the item has no known shape or an
    event of it has no usable id.
    """
    out: list[EventRecord] = []
    _collect(_decode_item(raw, path), raw, path, out)
    return out


def raw_text(raw: msgspec.Raw, path: str) -> str:
    """The JSON of ``raw`` as text; :class:`PayloadError` when it is not UTF-8."""
    return _utf8(raw, path)


def _recipients(item: Item, into: set[str]) -> None:
    for value in (item.recipientclientid, item.recipient_client_id):
        if value is not None:
            # A non-string never equals a configured client id; keep it visible as such.
            into.add(value if isinstance(value, str) else repr(value))


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | msgspec.Raw, path: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        message = str(exc)
        raise PayloadError(f"{path}: {message[:1].lower()}{message[1:]}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{path}: not valid JSON: {exc}") from None


def _decode_item(raw: msgspec.Raw, path: str) -> Item:
    """One typed pass for the documented shapes; the loose path for odd nested types."""
    try:
        return ITEM_DECODER.decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{path}: not valid JSON: {exc}") from None
    try:
        loose = LOOSE_ITEM_DECODER.decode(raw)
    except msgspec.ValidationError:
        raise PayloadError(f"{path}: expected an object (an event), got {_kind(raw)}") from None
    activities = None
    if loose.activities:
        activities = _decode(ITEMS_DECODER, loose.activities, path + ".activities")
    return Item(
        id=loose.id,
        type=loose.type,
        time=loose.time,
        specversion=loose.specversion,
        data=_soft_data(loose.data),
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
    try:
        loose = LOOSE_EVENT_DECODER.decode(raw)
    except msgspec.ValidationError:
        raise PayloadError(f"{path}: expected {expected}") from None
    body = None
    if loose.body:
        body = _loose_event(loose.body, path + ".body", "an object (a CloudEvent)")
    return CloudEvent(
        id=loose.id, type=loose.type, time=loose.time, data=_soft_data(loose.data), body=body
    )


def _soft_data(raw: msgspec.Raw) -> EventData | None:
    """``data`` when it is an object; otherwise nothing to extract (never an error)."""
    if not raw:
        return None
    try:
        return DATA_DECODER.decode(raw)
    except msgspec.ValidationError:
        return None


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


def _collect(item: Item, raw: msgspec.Raw, path: str, out: list[EventRecord]) -> str:
    """Append the events of one top-level item to ``out``; return the item's shape."""
    if item.activities is not None:
        _collect_legacy(item, path, out)
        return "legacy"
    if item.event is not None:
        if item.event.body is not None:
            out.append(_record(item.event.body, item, raw, path, ".event.body.id"))
            return "wrapper"
        out.append(_record(item.event, item, raw, path, ".event.id"))
        return "old-wrapper"
    if item.id is not None or item.specversion is not None or item.eventid is not None:
        event = CloudEvent(id=item.id, type=item.type, time=item.time, data=item.data)
        out.append(_record(event, item, raw, path, ".id"))
        return "cloudevent"
    if item.event_id is not None:
        out.append(_record(_EMPTY_EVENT, item, raw, path, ".id"))
        return "old-wrapper"
    raise PayloadError(
        f"{path}: not a known delivery shape; expected a CloudEvent (with id), "
        'an {"eventid", "event": {"body"}} wrapper, an {"event_id", "event"} wrapper '
        'or a legacy push with "activities"'
    )


def _decode_soft(decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw) -> Any:
    """Decode a nested member; ``None`` when it is not of the expected type."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError:
        return None


def _record(
    event: CloudEvent, item: Item, raw: msgspec.Raw, path: str, id_path: str
) -> EventRecord:
    key = _key(event.id, path + id_path)
    if key is None:
        key = _key(item.eventid, path + ".eventid")
    if key is None:
        key = _key(item.event_id, path + ".event_id")
    if key is None:
        raise PayloadError(
            f"{path}: the event has no id (none of id, eventid, event_id); "
            "it cannot be deduplicated"
        )
    event_type = event.type if isinstance(event.type, str) else None
    stream = stream_of(event_type)
    data = event.data or _NO_DATA
    occurred = None
    if stream == "activity":
        occurred = normalise_timestamp(data.activityDate)
    if occurred is None:
        occurred = normalise_timestamp(event.time)
    return EventRecord(
        key=key,
        key_hash=key_hash(key),
        stream=stream,
        type=event_type,
        munchkin_id=_text(data.munchkinId),
        activity_type_id=_integer(data.activityTypeId),
        lead_id=_integer(data.leadId),
        occurred_at=occurred,
        raw=_utf8(raw, path),
    )


def _collect_legacy(item: Item, path: str, out: list[EventRecord]) -> None:
    # Up to thousands of activities per body: the JSON path of each is built only for
    # an error message, and the common key (a non-empty string id) is taken as it is.
    activities = item.activities or []
    munchkin_id = _text(item.munchkinId)
    decode = LEGACY_DECODER.decode
    for index, raw in enumerate(activities):
        try:
            activity = decode(raw)
        except msgspec.ValidationError:
            raise PayloadError(
                f"{path}.activities[{index}]: expected an object (an activity), got {_kind(raw)}"
            ) from None
        key = activity.marketoGUID
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            key = _key(key, f"{path}.activities[{index}].marketoGUID")
            if key is None:
                raise PayloadError(
                    f"{path}.activities[{index}]: the activity has no marketoGUID; "
                    "it cannot be deduplicated"
                )
        try:
            text = str(raw, "utf-8")
        except UnicodeDecodeError:
            text = _utf8(raw, f"{path}.activities[{index}]")  # raises, naming the byte
        type_id = _integer(activity.activityTypeId)
        out.append(
            EventRecord(
                key=key,
                key_hash=key_hash(key),
                stream="activity",
                type=legacy_type(activity.activityType, type_id),
                munchkin_id=munchkin_id,
                activity_type_id=type_id,
                lead_id=_integer(activity.leadId),
                occurred_at=normalise_timestamp(activity.activityDate),
                raw=text,
            )
        )


def _key(value: object, path: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{path}: an event id must be a string, got {type(value).__name__}")
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
        raise PayloadError(f"{path}: invalid UTF-8 at byte {exc.start} of the event") from None
