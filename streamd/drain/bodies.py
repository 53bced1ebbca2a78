"""Request bodies of the ``http`` sink: streamd's envelope, or what Marketo and Adobe send.

Sans-IO: journaled events in, request bodies out. Three formats:

- ``streamd``: ``{"events": [envelope, ...]}``, one request per batch (sinks/base.py).
- ``legacy-push``: Marketo's legacy push, ``{"sourceApplication", "munchkinId",
  "messageId", "messageCreatedDate", "activities": [...]}``, one request per munchkin id
  of the batch. It carries lead activities only: an activity journaled from a legacy
  push goes as it was received; one journaled from Adobe I/O Events becomes the legacy
  activity of its CloudEvent's ``data``, its ``marketoGUID`` the event key (Adobe's
  migration guide maps ``marketoGUID`` to the CloudEvent ``id``). Any other event is
  refused with a reason (a dead letter), never dropped.
- ``cloudevents`` (a JSON array per batch) and ``cloudevents-single`` (one object per
  request): what Adobe I/O Events sends. An event journaled from I/O Events goes as it
  was received, with the missing half of each id pair added (``eventid``/``event_id``,
  ``recipientclientid``/``recipient_client_id``: Adobe sends both today); a legacy
  activity becomes the lead-activity CloudEvent Adobe would send for it, ``id`` (and
  both event ids) its ``marketoGUID``.

The invariant behind each conversion: a receiver applying CONTRACT.md's dedup rule
(CloudEvent ``id``, else ``eventid``, else ``event_id``; legacy ``marketoGUID``) gets
the event key this journal holds. An added id member always equals the one the rule
already picks, so it cannot change the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from streamd.drain.sinks.base import DrainEvent, json_array

Format = Literal["streamd", "legacy-push", "cloudevents", "cloudevents-single"]
FORMATS: Final[tuple[Format, ...]] = ("streamd", "legacy-push", "cloudevents", "cloudevents-single")
JSON: Final = "application/json"
# What Adobe names for one CloudEvent (CONTRACT.md); a batch goes as application/json.
CLOUDEVENT: Final = "application/cloudevents+json; charset=UTF-8"
ACTIVITY_SOURCE: Final = "urn:marketo_activity_stream"

_encode = msgspec.json.encode
_decode_any = msgspec.json.Decoder().decode


class _Peek(msgspec.Struct):
    """The top-level members a conversion needs to see; the rest is skipped unread."""

    id: Any = msgspec.UNSET
    eventid: Any = msgspec.UNSET
    event_id: Any = msgspec.UNSET
    recipientclientid: Any = msgspec.UNSET
    recipient_client_id: Any = msgspec.UNSET
    marketoGUID: Any = msgspec.UNSET
    specversion: Any = msgspec.UNSET
    event: msgspec.Raw = msgspec.Raw(b"")
    data: msgspec.Raw = msgspec.Raw(b"")


_peek = msgspec.json.Decoder(_Peek).decode


class Unsupported(Exception):
    """Raised when a format cannot carry an event; the message is the dead letter's reason."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a delivery: its body, its content type, and the events it carries."""

    body: bytes
    content_type: str
    seqs: tuple[int, ...]
    event_id: str | None = None  # cloudevents-single: the event's key
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class Bodies:
    """The requests of a batch, and the events no request can carry (seq, reason)."""

    requests: list[Request]
    rejected: list[tuple[int, str]]


def build(fmt: Format, events: Sequence[DrainEvent], *, now: str, recipient: str = "") -> Bodies:
    """The requests that deliver ``events`` (in journal order) in format ``fmt``.

    ``now``: the push's ``messageCreatedDate`` (RFC 3339, UTC). ``recipient``: the
    client id to name in an event that names none (``""``: name none). Formats
    ``streamd`` and ``cloudevents`` need the events' JSON and columns (not only the
    envelope) except ``streamd``.
    """
    if fmt == "streamd":
        body = b'{"events":' + json_array(events) + b"}"
        return Bodies([Request(body, JSON, tuple(e.seq for e in events))], [])
    rejected: list[tuple[int, str]] = []
    if fmt == "legacy-push":
        groups: dict[str | None, list[tuple[int, bytes]]] = {}
        for event in events:
            try:
                activity = legacy_activity(event)
            except Unsupported as exc:
                rejected.append((event.seq, str(exc)))
                continue
            groups.setdefault(event.munchkin_id, []).append((event.seq, activity))
        requests = [
            Request(_push(munchkin, members, now), JSON, tuple(seq for seq, _ in members))
            for munchkin, members in groups.items()
        ]
        return Bodies(requests, rejected)
    carried: list[tuple[DrainEvent, bytes]] = []
    for event in events:
        try:
            carried.append((event, cloudevent(event, recipient)))
        except Unsupported as exc:
            rejected.append((event.seq, str(exc)))
    if fmt == "cloudevents-single":
        requests = [
            Request(body, CLOUDEVENT, (event.seq,), event.key, event.type)
            for event, body in carried
        ]
    else:
        requests = [
            Request(
                b"[" + b",".join(body for _, body in carried) + b"]",
                JSON,
                tuple(event.seq for event, _ in carried),
            )
        ] if carried else []  # fmt: skip
    return Bodies(requests, rejected)


def _push(munchkin: str | None, members: list[tuple[int, bytes]], now: str) -> bytes:
    # The header fields as Marketo sends them; the activities spliced in, never re-encoded.
    # messageId: the first event's journal position, the same for every retry of a batch.
    head = _encode(
        {
            "sourceApplication": "Marketo",
            "munchkinId": munchkin,
            "messageId": str(members[0][0]),
            "messageCreatedDate": now,
        }
    )
    return head[:-1] + b',"activities":[' + b",".join(a for _, a in members) + b"]}"


def _object(event: DrainEvent) -> tuple[_Peek, bytes]:
    raw = event.raw.encode()
    try:
        peek = _peek(raw)
    except msgspec.DecodeError as exc:  # only a journal not written by streamd
        raise Unsupported(f"the journaled JSON is not an object: {exc}"[:300]) from None
    return peek, raw


def _is_legacy(peek: _Peek) -> bool:
    """A legacy activity as journaled (one element of a push's ``activities``)."""
    return (
        peek.marketoGUID is not msgspec.UNSET
        and peek.specversion is msgspec.UNSET
        and not peek.event
        and not peek.data
    )


def _cloudevent_of(raw: bytes, peek: _Peek) -> dict[str, Any]:
    """The CloudEvent of an I/O item: itself, ``event.body``, or ``event``."""
    if peek.event:
        inner = _decode_any(peek.event)
        if isinstance(inner, dict):
            body = inner.get("body")
            return body if isinstance(body, dict) else inner
    value = _decode_any(raw)
    return value if isinstance(value, dict) else {}


def legacy_activity(event: DrainEvent) -> bytes:
    """The legacy push activity of ``event`` (JSON); :class:`Unsupported` when it has none."""
    if event.stream != "activity":
        raise Unsupported(
            f"format legacy-push carries lead activities only, not {event.stream} events "
            f"(this one: {event.type or 'no type'})"
        )
    peek, raw = _object(event)
    if _is_legacy(peek):
        return raw  # as received; its marketoGUID is the key
    data = _cloudevent_of(raw, peek).get("data")
    if not isinstance(data, dict):
        raise Unsupported(
            "format legacy-push: the activity's CloudEvent has no data object to make "
            "a legacy activity of"
        )
    activity: dict[str, Any] = {"marketoGUID": event.key}
    for name, value in data.items():
        if name == "munchkinId" or name == "marketoGUID":
            continue  # the push names the instance once; the key is the id
        if name == "leadId" and isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)  # a number in the legacy push, a string in I/O Events
        activity[name] = value
    return _encode(activity)


def cloudevent(event: DrainEvent, recipient: str = "") -> bytes:
    """What Adobe I/O Events would send for ``event`` (one JSON object)."""
    peek, raw = _object(event)
    if _is_legacy(peek):
        return _from_legacy(event, raw, recipient)
    added: dict[str, Any] = {}
    _pair(peek.eventid, peek.event_id, "eventid", "event_id", event.key, added)
    _pair(
        peek.recipientclientid,
        peek.recipient_client_id,
        "recipientclientid",
        "recipient_client_id",
        recipient or None,
        added,
    )
    if not added:
        return raw
    # Spliced in front of the members as received: the rest is never re-encoded.
    text = raw.lstrip()
    rest = text[1:].lstrip()
    members = _encode(added)[1:-1]
    return b"{" + members + (b"" if rest.startswith(b"}") else b",") + rest


def _pair(
    first: Any, second: Any, first_name: str, second_name: str, fallback: Any, into: dict[str, Any]
) -> None:
    """Add the absent member(s) of a pair: the other's value, else ``fallback``."""
    unset = msgspec.UNSET
    if first is unset and second is unset:
        if fallback is not None:
            into[first_name] = into[second_name] = fallback
    elif first is unset:
        into[first_name] = second
    elif second is unset:
        into[second_name] = first


def _from_legacy(event: DrainEvent, raw: bytes, recipient: str) -> bytes:
    activity = _decode_any(raw)
    data: dict[str, Any] = {"munchkinId": event.munchkin_id}
    for name, value in activity.items():
        if name == "marketoGUID":
            continue
        if name == "leadId" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a string in I/O Events
        data[name] = value
    ce: dict[str, Any] = {"eventid": event.key, "event_id": event.key, "specversion": "1.0"}
    if event.type is not None:
        ce["type"] = event.type
    ce |= {
        "source": ACTIVITY_SOURCE,
        "id": event.key,
        "time": event.received_at,
        "datacontenttype": "application/json",
        "data": data,
    }
    if recipient:
        ce["recipientclientid"] = ce["recipient_client_id"] = recipient
    return _encode(ce)
