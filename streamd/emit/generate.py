"""Deterministic, realistic Marketo deliveries: the emulator's and the benchmark's events.

Shapes (CONTRACT.md §1):

- ``legacy``: one legacy push object ``{"sourceApplication", "munchkinId", "messageId",
  "messageCreatedDate", "activities": [...]}`` per request;
- ``io``: an Adobe I/O Events batch, a JSON array of top-level lead-activity CloudEvents
  (with ``single=True`` a batch of one is the bare object);
- ``mixed``: an I/O Events array mixing lead activities, user audit events in both
  wrappers (``{"eventid", "event": {"body": CloudEvent}}`` without a CloudEvent id, and
  the older ``{"event_id", "event": CloudEvent}`` whose CloudEvent ``id`` is the key)
  and notifications.

Which id fields the I/O items carry (``fields``, CONTRACT.md §1b): ``"new"`` gives every
item ``eventid`` and ``recipientclientid`` only (Adobe's shape once the underscored pair
is gone, at the end of 2026); ``"both"`` adds ``event_id`` and ``recipient_client_id``
with the same values, as Adobe's deliveries carry them until then.
:func:`id_fields_on` says which of the two Adobe sends on a given day.

Everything is drawn from a ``random.Random`` seeded by ``(seed, worker)``, so the same
arguments give the same bytes on every machine. Event ids are UUID-4 strings whose first
64 bits are random (so they land all over a B-tree index, as real GUIDs do) and whose last
62 bits encode ``(worker, seed, counter)``: ids never repeat within a stream, and two
streams with different ``(seed, worker)`` never share an id.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Iterator
from typing import Any, Final, Literal, NamedTuple

import orjson

from streamd.emit import catalog as cat

Shape = Literal["legacy", "io", "mixed"]
SHAPES: Final[tuple[Shape, ...]] = ("legacy", "io", "mixed")
IdFields = Literal["both", "new"]
ID_FIELDS: Final[tuple[IdFields, ...]] = ("both", "new")
# Adobe's FAQ: deliveries carry both pairs until the underscored one is removed "at the
# end of 2026"; from this day on (UTC) the emulator's automatic choice sends only the new.
UNDERSCORED_PAIR_REMOVED: Final = datetime.date(2027, 1, 1)

MAX_WORKERS: Final = 1 << 14
MAX_SEED: Final = 1 << 16
_MAX_COUNTER: Final = 1 << 32

RECIPIENT_CLIENT_ID: Final = "streamd-bench-client"
# Deliveries are dated from here on, one second per ten events, so runs are reproducible.
_EPOCH: Final = 1_777_712_400  # 2026-05-02T09:00:00Z
_DAY: Final = 86_400
# Data streams deliver within seconds to minutes of the activity: stamp event
# times up to five minutes behind the stream's clock (not a random day).
_LAG: Final = 300
_POOL_SIZE: Final = 1009
# Item kinds of the ``mixed`` shape and their weights.
_MIXED: Final = (("activity", 60), ("audit", 15), ("audit-old", 10), ("notification", 15))


class Generated(NamedTuple):
    """One request body and the dedup keys of its events, in order."""

    body: bytes
    keys: list[str]


def id_fields_on(day: datetime.date) -> IdFields:
    """The id fields Adobe's deliveries carry on ``day`` (a UTC date): ``"both"`` pairs
    before :data:`UNDERSCORED_PAIR_REMOVED`, ``"new"`` from then on."""
    return "both" if day < UNDERSCORED_PAIR_REMOVED else "new"


def _attr(name: str, data_type: str, value: Any) -> dict[str, Any]:
    return {"name": name, "dataType": data_type, "value": value}


def format_uuid(hi: int, lo: int) -> str:
    """The 8-4-4-4-12 text of a 128-bit value given as two 64-bit halves."""
    return (
        f"{hi >> 32:08x}-{(hi >> 16) & 0xFFFF:04x}-{hi & 0xFFFF:04x}-"
        f"{lo >> 48:04x}-{lo & 0xFFFFFFFFFFFF:012x}"
    )


class EventStream:
    """One worker's deterministic stream of events; ``next_*`` and ``*_event`` advance it.

    Raises ``ValueError`` for a seed or worker outside ``[0, MAX_SEED)`` / ``[0, MAX_WORKERS)``.
    """

    def __init__(self, seed: int, worker: int, *, recipient: str = RECIPIENT_CLIENT_ID) -> None:
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}), got {seed}")
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"worker must be in [0, {MAX_WORKERS}), got {worker}")
        # str seeds hash with SHA-512: stable across processes and Python versions.
        # Reproducible test data, not secrets: a seeded PRNG is the point.
        self.rng = random.Random(f"streamd-bench:{seed}:{worker}")  # noqa: S311
        self._tail = (0b10 << 62) | (worker << 48) | (seed << 32)
        self.counter = 0
        self.recipient = recipient

    def next_id(self) -> str:
        if self.counter >= _MAX_COUNTER:
            raise OverflowError("event id counter exhausted for this (seed, worker)")
        hi = (self.rng.getrandbits(64) & ~0xF000) | 0x4000  # version 4
        lo = self._tail | self.counter
        self.counter += 1
        return format_uuid(hi, lo)

    def stamp(self, jitter: int = 0) -> str:
        """An RFC 3339 time: one second per ten ids issued, plus up to ``jitter`` s."""
        offset = self.counter // 10 + (self.rng.randrange(jitter) if jitter else 0)
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_EPOCH + offset))

    def odd_stamp(self) -> str:
        """A time as some Marketo events carry it: no zone, or an offset like ``-5:00``."""
        t = _EPOCH + self.counter // 10
        ms = self.rng.randrange(1000)
        form = self.rng.randrange(3)
        if form == 0:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{ms:03d}"
        if form == 1:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t - 5 * 3600)) + f".{ms}-5:00"
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"

    def attributes(self, type_id: int) -> list[dict[str, Any]]:
        rng = self.rng
        if type_id in cat.WEB_TYPES:
            attrs = [
                _attr("Webpage URL", "string", "https://" + rng.choice(cat.PAGES)),
                _attr("User Agent", "string", rng.choice(cat.USER_AGENTS)),
                _attr("Client IP Address", "string", f"198.51.100.{rng.randrange(1, 255)}"),
                _attr("Referrer URL", "string", rng.choice(cat.REFERRERS)),
            ]
        elif type_id in cat.EMAIL_TYPES:
            attrs = [
                _attr("Campaign Run ID", "integer", rng.randrange(5000, 6000)),
                _attr("Step ID", "integer", rng.randrange(1, 40)),
                _attr("Is Mobile Device", "boolean", rng.random() < 0.4),
                _attr("Device", "string", rng.choice(("Desktop", "iPhone", "Android", "iPad"))),
            ]
        elif type_id in cat.CHANGE_TYPES:
            old = rng.randrange(0, 200)
            attrs = [
                _attr("New Value", "string", str(old + rng.randrange(-20, 40))),
                _attr("Old Value", "string", None if old == 0 else str(old)),
                _attr("Reason", "string", rng.choice(("Form fill", "Smart campaign", "API"))),
            ]
        elif type_id >= 100000:
            attrs = [
                _attr("Registration Code", "string", f"REG-{rng.randrange(10**8):08d}"),
                _attr("Duration Minutes", "float", round(rng.uniform(1, 90), 2)),
                _attr("Occurred At", "datetime", self.stamp(_DAY)),
            ]
        elif type_id in cat.PROGRAM_TYPES:
            program_id, program = rng.choice(cat.PROGRAMS)
            attrs = [
                _attr("Program ID", "integer", program_id),
                _attr("Program Name", "string", program),
                _attr("Track ID", "integer", rng.randrange(1, 12)),
            ]
        else:
            attrs = [
                _attr("Source", "string", rng.choice(("Web form fillout", "List import", "API"))),
                _attr("Priority", "integer", rng.randrange(1, 5)),
            ]
        return attrs

    def activity_fields(
        self, *, min_attributes: int = 1, max_attributes: int = 4
    ) -> tuple[int, str, dict[str, Any]]:
        """Return ``(type id, type name, fields common to both shapes)``."""
        rng = self.rng
        type_id, type_name, _ = rng.choices(cat.ACTIVITY_TYPES, weights=cat.TYPE_WEIGHTS)[0]
        if type_id in cat.WEB_TYPES:
            primary_id, primary = rng.randrange(1, 400), rng.choice(cat.PAGES)
        elif type_id in cat.EMAIL_TYPES:
            primary_id, primary = rng.randrange(1000, 1100), rng.choice(cat.EMAILS)
        else:
            primary_id, primary = rng.randrange(0, 100), rng.choice(("", "Job Title", "Score"))
        fields: dict[str, Any] = {
            "activityDate": self.stamp(_LAG),
            "activityTypeId": type_id,
            "activityType": type_name,
            "primaryAttributeValueId": primary_id,
            "primaryAttributeValue": primary,
            "activityLogItemId": rng.randrange(7_700_000, 99_000_000),
        }
        if rng.random() < 0.3:
            fields["campaignId"], fields["campaignName"] = rng.choice(cat.CAMPAIGNS)
        attrs = self.attributes(type_id)
        # 1-4 attributes per activity, as the legacy and I/O fixtures show.
        k = self.rng.randint(min(min_attributes, len(attrs)), min(max_attributes, len(attrs)))
        fields["attributes"] = attrs[:k]
        return type_id, type_name, fields

    def munchkin(self) -> str:
        return self.rng.choices(cat.MUNCHKIN_IDS, weights=cat.MUNCHKIN_WEIGHTS)[0]

    def legacy_activity(self) -> dict[str, Any]:
        """A legacy activity without its ``marketoGUID``."""
        _, _, fields = self.activity_fields(min_attributes=2)
        return {"leadId": self.rng.randrange(1_000, 5_000_000), **fields}

    def activity_event(self) -> dict[str, Any]:
        """A top-level lead-activity CloudEvent without ``eventid``/``id``."""
        type_id, type_name, fields = self.activity_fields(max_attributes=2)
        if type_id >= 100000:
            event_type = cat.ACTIVITY_TYPE_PREFIX + "custom"
        else:
            event_type = cat.ACTIVITY_TYPE_PREFIX + "standard." + type_name.lower().replace(" ", "")
        data: dict[str, Any] = {
            "munchkinId": self.munchkin(),
            "leadId": str(self.rng.randrange(1_000, 5_000_000)),
            **fields,
        }
        if self.rng.random() < 0.2:
            data["programId"], data["programName"] = self.rng.choice(cat.PROGRAMS)
        return {
            "specversion": "1.0",
            "type": event_type,
            "source": "urn:marketo_activity_stream",
            "time": self.stamp(_LAG),
            "datacontenttype": "application/json",
            "data": data,
            "recipientclientid": self.recipient,
        }

    def audit_cloudevent(self) -> dict[str, Any]:
        """A user-audit CloudEvent without ``id`` (the current wrapper carries none)."""
        rng = self.rng
        suffix, component = rng.choice(cat.AUDIT_COMPONENTS)
        data: dict[str, Any] = {
            "componentId": rng.randrange(1000, 400_000),
            "componentType": component,
            "eventAction": rng.choice(cat.AUDIT_ACTIONS),
            "munchkinId": self.munchkin(),
            "imsOrgId": cat.IMS_ORG_ID,
            "userId": rng.choice(cat.USERS),
        }
        if rng.random() < 0.3:
            data["componentName"] = rng.choice(cat.EMAILS)
        return {
            "specversion": "1.0",
            "type": cat.AUDIT_TYPE_PREFIX + suffix,
            "source": "urn:asset_api",
            "time": self.odd_stamp() if rng.random() < 0.5 else self.stamp(_LAG),
            "datacontenttype": "application/json",
            "dataschema": "V2.0",
            "data": data,
        }

    def notification_cloudevent(self) -> dict[str, Any]:
        """A notification CloudEvent without ``id``."""
        rng = self.rng
        kind = rng.choice(cat.NOTIFICATION_KINDS)
        data: dict[str, Any]
        if kind == "web_services":
            data = {
                "componentType": "web_services",
                "subType": "daily_quota",
                "eventAction": {
                    "dailyQuota": 50000,
                    "percent": rng.choice((50, 75, 90, 100)),
                    "serviceNames": ["REST API"],
                },
            }
        else:
            campaign_id, campaign = rng.choice(cat.CAMPAIGNS)
            data = {
                "componentType": "campaign",
                "subType": kind,
                "eventAction": {
                    "campaignId": campaign_id,
                    "campaignName": campaign,
                    "reason": rng.choice(
                        ("Smart list too large", "Flow step failed", "Aborted by user")
                    ),
                },
            }
        data["imsOrgId"] = cat.IMS_ORG_ID
        data["munchkinId"] = self.munchkin()
        return {
            "specversion": "1.0",
            "type": cat.NOTIFICATION_TYPE_PREFIX + kind,
            "source": "urn:mlm",
            "time": self.odd_stamp(),
            "datacontenttype": "application/json",
            "dataschema": "V1.0",
            "data": data,
        }


def _tail(doc: dict[str, Any]) -> bytes:
    """The encoded object without its opening brace: ids are spliced in front of it."""
    return orjson.dumps(doc)[1:]


class BatchMaker:
    """Makes successive request bodies of one shape for one ``(seed, worker)``.

    Encoding every event from scratch costs ~8 us; a pool of encoded events with fresh
    ids spliced in costs ~1 us, which keeps the emulator far above any receiver. Only the
    ids need to be unique: receivers store the rest as opaque bytes. ``fields``: which
    id pairs the I/O items carry (the module's docstring); the legacy push has neither.
    Raises ``ValueError`` for an unknown shape or fields, or a seed/worker out of range.
    """

    def __init__(
        self,
        shape: Shape,
        *,
        seed: int,
        worker: int,
        recipient: str = RECIPIENT_CLIENT_ID,
        fields: IdFields = "new",
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        if fields not in ID_FIELDS:
            raise ValueError(f"unknown id fields {fields!r}; expected one of {ID_FIELDS}")
        self.shape = shape
        self.fields = fields
        self.stream = stream = EventStream(seed, worker, recipient=recipient)
        self._pools: dict[str, list[bytes]] = {}
        wrap = {"recipientclientid": recipient}
        if fields == "both":
            wrap["recipient_client_id"] = recipient
        # Spliced after the id fields of an item ("both": event_id beside eventid).
        self._ids = b'"eventid":"%s","event_id":"%s",' if fields == "both" else b'"eventid":"%s",'
        self._wrap = _tail(wrap)[:-1]  # the recipient fields, without braces
        if shape == "legacy":
            self._pools["legacy"] = [_tail(stream.legacy_activity()) for _ in range(_POOL_SIZE)]
        else:
            self._pools["activity"] = [
                _tail({**stream.activity_event(), **wrap}) for _ in range(_POOL_SIZE)
            ]
        if shape == "mixed":
            self._pools["audit"] = [
                _tail({"event": {"body": stream.audit_cloudevent()}, **wrap}) for _ in range(101)
            ]
            self._pools["audit-old"] = [_tail(stream.audit_cloudevent()) for _ in range(101)]
            self._pools["notification"] = [
                _tail({"event": {"body": stream.notification_cloudevent()}, **wrap})
                for _ in range(101)
            ]
        self._message_id = stream.rng.randrange(10**8)

    def make(self, n: int, *, single: bool = False) -> Generated:
        """The next body of ``n`` events (``single``: a batch of one as a bare object).

        Raises ``ValueError`` when ``n`` is below 1.
        """
        if n < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        stream = self.stream
        next_id = stream.next_id
        keys: list[str] = []
        if self.shape == "legacy":
            bodies = stream.rng.choices(self._pools["legacy"], k=n)
            head = orjson.dumps(
                {
                    "sourceApplication": "Marketo",
                    "munchkinId": stream.munchkin(),
                    "messageId": str(self._message_id),
                    "messageCreatedDate": stream.stamp(),
                }
            )
            self._message_id += 1
            parts = []
            for b in bodies:
                key = next_id()
                keys.append(key)
                parts.append(b'{"marketoGUID":"%s",%s' % (key.encode(), b))
            return Generated(head[:-1] + b',"activities":[' + b",".join(parts) + b"]}", keys)
        if self.shape == "io":
            items = [
                self._activity(b, keys) for b in stream.rng.choices(self._pools["activity"], k=n)
            ]
        else:
            kinds = stream.rng.choices([k for k, _ in _MIXED], weights=[w for _, w in _MIXED], k=n)
            items = [self._item(kind, keys) for kind in kinds]
        if single and n == 1:
            return Generated(items[0], keys)
        return Generated(b"[" + b",".join(items) + b"]", keys)

    def _id_fields(self, key: bytes) -> bytes:
        return self._ids % ((key, key) if self.fields == "both" else (key,))

    def _activity(self, tail: bytes, keys: list[str]) -> bytes:
        key = self.stream.next_id().encode()
        keys.append(key.decode())
        return b'{%s"id":"%s",%s' % (self._id_fields(key), key, tail)

    def _item(self, kind: str, keys: list[str]) -> bytes:
        rng = self.stream.rng
        tail = rng.choice(self._pools[kind])
        if kind == "activity":
            return self._activity(tail, keys)
        key = self.stream.next_id()
        keys.append(key)
        k = key.encode()
        if kind in ("audit", "notification"):  # no CloudEvent id: the key is eventid
            return b"{%s%s" % (self._id_fields(k), tail)
        # The older wrapper (the CloudEvent right under "event"): the key is the
        # CloudEvent's own id, not the delivery's id.
        outer = self.stream.next_id().encode()
        if self.fields == "both":
            head = b'"event_id":"%s","eventid":"%s",' % (outer, outer)
        else:
            head = b'"eventid":"%s",' % outer
        return b'{%s"event":{"id":"%s",%s,%s}' % (head, k, tail, self._wrap)


def iter_batches(shape: Shape, batch_size: int, *, seed: int, worker: int) -> Iterator[bytes]:
    """Yield successive request bodies of ``batch_size`` events each, forever.

    The stream is a pure function of ``(shape, batch_size, seed, worker)``; no event id
    repeats within it or appears in a stream with another ``(seed, worker)``.
    Raises ``ValueError`` for an unknown shape, a batch size below 1, or a seed or worker
    outside ``[0, MAX_SEED)`` / ``[0, MAX_WORKERS)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    maker = BatchMaker(shape, seed=seed, worker=worker)
    while True:
        yield maker.make(batch_size).body


def take_batches(
    shape: Shape, batch_size: int, count: int, *, seed: int, worker: int
) -> list[bytes]:
    """Return the first ``count`` bodies of ``iter_batches(...)``; same errors."""
    it = iter_batches(shape, batch_size, seed=seed, worker=worker)
    return [next(it) for _ in range(count)]


def event_ids(shape: Shape, body: bytes) -> list[str]:
    """Return the dedup keys of a body made here, in order (used by self-checks)."""
    doc = orjson.loads(body)
    if shape == "legacy":
        return [a["marketoGUID"] for a in doc["activities"]]
    items = doc if isinstance(doc, list) else [doc]
    keys = []
    for item in items:
        if "id" in item:
            keys.append(item["id"])
        elif isinstance(item.get("event"), dict) and "id" in item["event"]:
            keys.append(item["event"]["id"])
        else:
            keys.append(item["eventid"])
    return keys
