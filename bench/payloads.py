"""Deterministic, realistic Marketo delivery bodies for the benchmarks.

Two shapes, both built from the field lists in the wire contract:

- ``legacy``: one legacy push object ``{"sourceApplication", "munchkinId", "messageId",
  "messageCreatedDate", "activities": [...]}`` per request;
- ``io``: an Adobe I/O Events batch, a JSON array of top-level CloudEvents.

Everything is drawn from a ``random.Random`` seeded by ``(seed, worker)``, so the same
arguments give the same bytes on every machine. Event ids are UUID-4 strings whose first
64 bits are random (so they land all over a B-tree index, as real GUIDs do) and whose last
62 bits encode ``(worker, seed, counter)``: ids never repeat within a stream, and two
streams with different ``(seed, worker)`` never share an id.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any, Final, Literal

import orjson

Shape = Literal["legacy", "io"]
SHAPES: Final[tuple[Shape, ...]] = ("legacy", "io")

MAX_WORKERS: Final = 1 << 14
MAX_SEED: Final = 1 << 16
_MAX_COUNTER: Final = 1 << 32

# (id, name, weight): the standard ids the I/O stream lists, weighted towards what a
# real instance sends most (web visits and email engagement), plus custom 100000+ ids.
ACTIVITY_TYPES: Final[tuple[tuple[int, str, int], ...]] = (
    (1, "Visit Webpage", 30),
    (2, "Fill Out Form", 4),
    (3, "Click Link", 6),
    (6, "Send Email", 12),
    (7, "Email Delivered", 12),
    (8, "Email Bounced", 1),
    (9, "Unsubscribe Email", 1),
    (10, "Open Email", 14),
    (11, "Click Email", 6),
    (12, "New Lead", 3),
    (13, "Change Data Value", 8),
    (19, "Sync Lead to SFDC", 2),
    (21, "Convert Lead", 1),
    (22, "Change Score", 6),
    (23, "Change Owner", 1),
    (24, "Add To List", 3),
    (25, "Remove from List", 1),
    (27, "Email Bounced Soft", 1),
    (32, "Merge Leads", 1),
    (37, "Delete Lead", 1),
    (46, "Interesting Moment", 2),
    (47, "Request Campaign", 1),
    (104, "Change Status In Progression", 3),
    (110, "Call Webhook", 1),
    (113, "Add To Nurture", 1),
    (114, "Change Nurture Track", 1),
    (123, "Change Program Member Data", 1),
    (145, "Push Lead to Marketo", 1),
    (100001, "Attended Webinar", 2),
    (100002, "Downloaded Whitepaper", 2),
    (100017, "Started Product Trial", 1),
)
_TYPE_WEIGHTS: Final = tuple(w for _, _, w in ACTIVITY_TYPES)

MUNCHKIN_IDS: Final = ("123-ABC-456", "284-XYZ-901", "517-QRS-338", "902-LMN-117")
_MUNCHKIN_WEIGHTS: Final = (8, 4, 2, 1)

RECIPIENT_CLIENT_ID: Final = "streamd-bench-client"
IO_TYPE_PREFIX: Final = "com.adobe.platform.marketo.activity."
# Deliveries are dated from here on, one second per ten events, so runs are reproducible.
_EPOCH: Final = 1_777_712_400  # 2026-05-02T09:00:00Z
_DAY: Final = 86_400
# Data streams deliver within seconds to minutes of the activity: stamp event
# times up to five minutes behind the stream's clock (not a random day).
_LAG: Final = 300
_POOL_SIZE: Final = 1009

_PAGES: Final = (
    "www.example.com/pricing.html",
    "www.example.com/products/streaming-analytics",
    "www.example.com/blog/2026/05/why-durable-ingest-matters",
    "info.example.com/lp/webinar-spring-launch.html",
    "www.example.com/customers/case-study-acme-logistics",
    "www.example.com/docs/getting-started?utm_source=newsletter",
)
_EMAILS: Final = (
    "Spring launch email",
    "Webinar invite - May 2026",
    "Nurture 3: Customer stories",
    "Trial day 7 check-in",
    "Quarterly product update",
)
_USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
)
_REFERRERS: Final = (
    "https://www.google.com/",
    "https://www.linkedin.com/feed/",
    "https://news.ycombinator.com/",
    "",
)
_CAMPAIGNS: Final = (
    (3310, "Enrich titles"),
    (4102, "Score web engagement"),
    (5012, "Spring launch send"),
    (5120, "Webinar follow-up"),
)
_PROGRAMS: Final = ((1201, "2026-05 Spring Launch"), (1288, "Always-on Nurture"))


def _attr(name: str, data_type: str, value: Any) -> dict[str, Any]:
    return {"name": name, "dataType": data_type, "value": value}


class _Stream:
    """One worker's deterministic stream of events; ``next_*`` advance it."""

    def __init__(self, seed: int, worker: int) -> None:
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}), got {seed}")
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"worker must be in [0, {MAX_WORKERS}), got {worker}")
        # str seeds hash with SHA-512: stable across processes and Python versions.
        self.rng = random.Random(f"streamd-bench:{seed}:{worker}")
        self._tail = (0b10 << 62) | (worker << 48) | (seed << 32)
        self.counter = 0

    def next_id(self) -> str:
        if self.counter >= _MAX_COUNTER:
            raise OverflowError("event id counter exhausted for this (seed, worker)")
        hi = (self.rng.getrandbits(64) & ~0xF000) | 0x4000  # version 4
        lo = self._tail | self.counter
        self.counter += 1
        return (
            f"{hi >> 32:08x}-{(hi >> 16) & 0xFFFF:04x}-{hi & 0xFFFF:04x}-"
            f"{lo >> 48:04x}-{lo & 0xFFFFFFFFFFFF:012x}"
        )

    def stamp(self, jitter: int = 0) -> str:
        """An RFC 3339 time: one second per ten ids issued, plus up to ``jitter`` s."""
        offset = self.counter // 10 + (self.rng.randrange(jitter) if jitter else 0)
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_EPOCH + offset))

    def attributes(self, type_id: int) -> list[dict[str, Any]]:
        rng = self.rng
        if type_id in (1, 3):
            attrs = [
                _attr("Webpage URL", "string", "https://" + rng.choice(_PAGES)),
                _attr("User Agent", "string", rng.choice(_USER_AGENTS)),
                _attr("Client IP Address", "string", f"198.51.100.{rng.randrange(1, 255)}"),
                _attr("Referrer URL", "string", rng.choice(_REFERRERS)),
            ]
        elif type_id in (6, 7, 8, 9, 10, 11, 27):
            attrs = [
                _attr("Campaign Run ID", "integer", rng.randrange(5000, 6000)),
                _attr("Step ID", "integer", rng.randrange(1, 40)),
                _attr("Is Mobile Device", "boolean", rng.random() < 0.4),
                _attr("Device", "string", rng.choice(("Desktop", "iPhone", "Android", "iPad"))),
            ]
        elif type_id in (13, 22, 104, 123):
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
        type_id, type_name, _ = rng.choices(ACTIVITY_TYPES, weights=_TYPE_WEIGHTS)[0]
        if type_id in (1, 3):
            primary_id, primary = rng.randrange(1, 400), rng.choice(_PAGES)
        elif type_id in (6, 7, 8, 9, 10, 11, 27):
            primary_id, primary = rng.randrange(1000, 1100), rng.choice(_EMAILS)
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
            fields["campaignId"], fields["campaignName"] = rng.choice(_CAMPAIGNS)
        attrs = self.attributes(type_id)
        # 1-4 attributes per activity, as the legacy and I/O fixtures show.
        k = self.rng.randint(min(min_attributes, len(attrs)), min(max_attributes, len(attrs)))
        fields["attributes"] = attrs[:k]
        return type_id, type_name, fields

    def munchkin(self) -> str:
        return self.rng.choices(MUNCHKIN_IDS, weights=_MUNCHKIN_WEIGHTS)[0]

    def legacy_activity(self) -> bytes:
        """An encoded legacy activity without its ``marketoGUID`` (added per batch)."""
        _, _, fields = self.activity_fields(min_attributes=2)
        return orjson.dumps({"leadId": self.rng.randrange(1_000, 5_000_000), **fields})

    def io_event(self) -> bytes:
        """An encoded top-level CloudEvent without ``eventid``/``id`` (added per batch)."""
        type_id, type_name, fields = self.activity_fields(max_attributes=2)
        if type_id >= 100000:
            event_type = IO_TYPE_PREFIX + "custom"
        else:
            event_type = IO_TYPE_PREFIX + "standard." + type_name.lower().replace(" ", "")
        data: dict[str, Any] = {
            "munchkinId": self.munchkin(),
            "leadId": str(self.rng.randrange(1_000, 5_000_000)),
            **fields,
        }
        if self.rng.random() < 0.2:
            data["programId"], data["programName"] = self.rng.choice(_PROGRAMS)
        return orjson.dumps(
            {
                "specversion": "1.0",
                "type": event_type,
                "source": "urn:marketo_activity_stream",
                "time": self.stamp(_LAG),
                "datacontenttype": "application/json",
                "data": data,
                "recipientclientid": RECIPIENT_CLIENT_ID,
            }
        )


def iter_batches(shape: Shape, batch_size: int, *, seed: int, worker: int) -> Iterator[bytes]:
    """Yield successive request bodies of ``batch_size`` events each, forever.

    The stream is a pure function of ``(shape, batch_size, seed, worker)``; no event id
    repeats within it or appears in a stream with another ``(seed, worker)``.
    Raises ``ValueError`` for an unknown shape, a batch size below 1, or a seed or worker
    outside ``[0, MAX_SEED)`` / ``[0, MAX_WORKERS)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    stream = _Stream(seed, worker)
    # Encoding every event from scratch costs ~8 us; a pool of encoded bodies with fresh
    # ids spliced in costs ~1 us, which keeps pre-generation short. Only the ids need to
    # be unique: the server stores the rest as opaque bytes.
    make = stream.legacy_activity if shape == "legacy" else stream.io_event
    pool = [make()[1:] for _ in range(_POOL_SIZE)]  # each without its opening brace
    choose = stream.rng.choices
    next_id = stream.next_id
    message_id = stream.rng.randrange(10**8)
    while True:
        bodies = choose(pool, k=batch_size)
        if shape == "legacy":
            head = orjson.dumps(
                {
                    "sourceApplication": "Marketo",
                    "munchkinId": stream.munchkin(),
                    "messageId": str(message_id),
                    "messageCreatedDate": stream.stamp(),
                }
            )
            message_id += 1
            parts = [b'{"marketoGUID":"%s",%s' % (next_id().encode(), b) for b in bodies]
            yield head[:-1] + b',"activities":[' + b",".join(parts) + b"]}"
        else:
            parts = []
            for b in bodies:
                i = next_id().encode()
                parts.append(b'{"eventid":"%s","id":"%s",%s' % (i, i, b))
            yield b"[" + b",".join(parts) + b"]"


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
    return [e["id"] for e in doc]
