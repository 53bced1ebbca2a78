"""Wire types: what the senders post, as frozen msgspec Structs.

Only the fields streamd extracts are declared; everything else is skipped by
the decoder and kept verbatim in the raw JSON. Leaf fields are ``Any`` on
purpose: a sender that sends ``leadId`` as a string or ``activityTypeId`` as
text must not get its event rejected (CONTRACT.md: nothing but a key is
required of an event). Documented shapes decode in one typed pass (:class:`Item`);
when a nested member has an unexpected type (``data`` as a string, say), the
item is decoded again with :class:`LooseItem`, whose nested members are kept
as ``msgspec.Raw`` and decoded one level at a time, so a wrong type at one
level never rejects the event.
"""

from __future__ import annotations

from typing import Any

import msgspec

# An absent Raw field decodes to this empty value (msgspec cannot express Raw | None).
_ABSENT = msgspec.Raw(b"")


class EventData(msgspec.Struct, frozen=True):
    """The ``data`` member of a CloudEvent (lead activity, user audit or notification)."""

    munchkinId: Any = None
    leadId: Any = None
    activityDate: Any = None
    activityTypeId: Any = None


class CloudEvent(msgspec.Struct, frozen=True):
    """A CloudEvent, or the ``event`` member of a wrapper (which may hold one as ``body``)."""

    id: Any = None
    type: Any = None
    time: Any = None
    data: EventData | None = None
    body: CloudEvent | None = None  # present only in the {"event": {"body": ...}} wrapper


class Item(msgspec.Struct, frozen=True):
    """One top-level delivery object: a CloudEvent, a wrapper, a legacy push or a challenge."""

    id: Any = None
    type: Any = None
    time: Any = None
    specversion: Any = None
    data: EventData | None = None
    eventid: Any = None
    event_id: Any = None
    event: CloudEvent | None = None
    activities: list[msgspec.Raw] | None = None
    munchkinId: Any = None
    messageId: Any = None
    validationUrl: Any = None
    recipientclientid: Any = None
    recipient_client_id: Any = None


class LooseEvent(msgspec.Struct, frozen=True):
    """:class:`CloudEvent` with nested members kept raw: the path for odd types."""

    id: Any = None
    type: Any = None
    time: Any = None
    data: msgspec.Raw = _ABSENT
    body: msgspec.Raw = _ABSENT


class LooseItem(msgspec.Struct, frozen=True):
    """:class:`Item` with nested members kept raw, decoded one level at a time."""

    id: Any = None
    type: Any = None
    time: Any = None
    specversion: Any = None
    data: msgspec.Raw = _ABSENT
    eventid: Any = None
    event_id: Any = None
    event: msgspec.Raw = _ABSENT
    activities: msgspec.Raw = _ABSENT
    munchkinId: Any = None
    messageId: Any = None
    validationUrl: Any = None
    recipientclientid: Any = None
    recipient_client_id: Any = None


class LegacyActivity(msgspec.Struct, frozen=True):
    """One activity of a legacy push (``activities[]``)."""

    marketoGUID: Any = None
    leadId: Any = None
    activityDate: Any = None
    activityTypeId: Any = None
    activityType: Any = None


class EventRecord(msgspec.Struct, frozen=True, gc=False):
    """One event, normalised for the journal: extracted columns plus the JSON as received."""

    key: str
    key_hash: int
    stream: str
    type: str | None
    munchkin_id: str | None
    activity_type_id: int | None
    lead_id: int | None
    occurred_at: str | None
    raw: str


class Delivery(msgspec.Struct, frozen=True):
    """A decoded request body: the events to journal, or a validation challenge."""

    shape: str
    events: list[EventRecord]
    message_id: str | None = None
    validation_url: str | None = None
    # The client ids the items name as their recipient (recipientclientid or
    # recipient_client_id), for sources that check Adobe signatures.
    recipients: frozenset[str] = frozenset()


# One decoder per type, created once (msgspec: decoders are reusable and cheap to call).
ITEM_DECODER = msgspec.json.Decoder(Item)
LOOSE_ITEM_DECODER = msgspec.json.Decoder(LooseItem)
ITEMS_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
RAW_DECODER = msgspec.json.Decoder(msgspec.Raw)
CLOUDEVENT_DECODER = msgspec.json.Decoder(CloudEvent)
LOOSE_EVENT_DECODER = msgspec.json.Decoder(LooseEvent)
DATA_DECODER = msgspec.json.Decoder(EventData)
LEGACY_DECODER = msgspec.json.Decoder(LegacyActivity)
