"""Adobe's Journaling API pages (CONTRACT.md §2), decoded into journal records (sans-IO).

A 200 answer is ``{"events": [{"position": "...", "event": {...}}], "_page": {"last",
"count"}}``. Each ``event`` is normalised exactly as a pushed item is (its CloudEvent
``id``, ``eventid`` or ``event_id`` is the dedup key), so the same event pushed and
pulled is journaled once.

An entry whose event cannot be normalised (no id, not an object, an id of the wrong
type, not UTF-8) is still journaled, never dropped and never allowed to stop the pull:
its key is ``journal-position:<position>``, unique in Adobe's journal, its stream
``other``, and the caller is told (``Page.unkeyed``) so it can warn. An event that is
not UTF-8 cannot be stored as JSON text: its exact bytes are kept base64-encoded in
``{"streamd_undecodable_base64": "..."}``. A page that is not the documented
JSON at all, or nests deeper than an event may (:data:`PAGE_DEPTH`), raises
:class:`PayloadError`: nothing of it is journaled and the position does not move.
"""

from __future__ import annotations

import base64

import msgspec

from streamd.core.normalise import key_hash, normalise_item, raw_text
from streamd.core.wire import MAX_DEPTH, EventRecord, check_depth, decode_failure
from streamd.errors import PayloadError

MAX_POSITION_LENGTH = 1024
POSITION_KEY_PREFIX = "journal-position:"
# The page, its "events" array and an entry hold each event: 3 levels more than a pushed
# body may have, so whatever push accepts, a page of it is accepted too.
PAGE_DEPTH = MAX_DEPTH + 3


class _Entry(msgspec.Struct, frozen=True):
    position: str
    event: msgspec.Raw


class _Page(msgspec.Struct, frozen=True):
    # ``_page`` ({"last", "count"}) repeats what the events say; it is not needed.
    events: list[_Entry] = msgspec.field(default_factory=list)


_PAGE_DECODER = msgspec.json.Decoder(_Page)
_UNDECODABLE = msgspec.json.Encoder()
# An event that is not UTF-8 is stored as {UNDECODABLE_FIELD: "<its bytes, base64>"}.
UNDECODABLE_FIELD = "streamd_undecodable_base64"


class Page(msgspec.Struct, frozen=True):
    """One decoded page: its records (in journal order) and the position after them."""

    records: list[EventRecord]
    last: str | None  # the position of the last event (None: the page was empty)
    unkeyed: list[str]  # positions of events journaled under a position key (see above)


def check_position(position: object, where: str) -> str:
    """``position`` when it is a usable opaque position; else :class:`PayloadError`."""
    if not isinstance(position, str) or not position:
        raise PayloadError(f"{where}: a position must be a non-empty string")
    if len(position) > MAX_POSITION_LENGTH:
        raise PayloadError(f"{where}: a position longer than {MAX_POSITION_LENGTH} characters")
    if not position.isprintable() or not position.isascii():
        raise PayloadError(f"{where}: a position must be printable ASCII")
    return position


def decode_page(body: bytes) -> Page:
    """Decode a 200 answer of the Journaling API.

    Raises :class:`PayloadError` naming the problem and, where there is one, the field
    (never another exception on hostile bytes).
    """
    check_depth(body, PAGE_DEPTH, "journal page")  # before the decoder can recurse
    try:
        page = _PAGE_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"journal page: {decode_failure(exc, body, '$')}") from None
    except RecursionError:
        raise PayloadError("journal page: JSON nested too deeply to decode here") from None
    records: list[EventRecord] = []
    unkeyed: list[str] = []
    for index, entry in enumerate(page.events):
        path = f"$.events[{index}]"
        position = check_position(entry.position, path + ".position")
        raw = entry.event
        try:
            found = normalise_item(raw, path + ".event", checked=True)
        except PayloadError:
            found = []
        if found:
            records.extend(found)
            continue
        # No keyed event in it (no id, an id of an odd type, not an object): keep it whole
        # under its position rather than stall the pull or lose it.
        key = POSITION_KEY_PREFIX + position
        try:
            text = raw_text(raw, path + ".event")
        except PayloadError:
            # Not UTF-8, so not storable as JSON text: its exact bytes, base64 in a JSON
            # object, so a sink still gets valid JSON and nothing is lost.
            kept = {UNDECODABLE_FIELD: base64.b64encode(raw).decode()}
            text = _UNDECODABLE.encode(kept).decode()
        records.append(
            EventRecord(
                key=key,
                key_hash=key_hash(key),
                stream="other",
                type=None,
                munchkin_id=None,
                activity_type_id=None,
                lead_id=None,
                occurred_at=None,
                raw=text,
            )
        )
        unkeyed.append(position)
    last = page.events[-1].position if page.events else None
    return Page(records=records, last=last, unkeyed=unkeyed)
