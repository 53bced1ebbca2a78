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

Also here, what the bytes themselves must be before any decoder sees them: nested no
deeper than :data:`MAX_DEPTH` (:func:`check_depth`, which never recurses); where in the
JSON a bad byte sits (:func:`json_path_at`); and a decoder's error translated into the
:class:`PayloadError` the sender is told, naming the field (:func:`decode_failure`).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

import msgspec

from streamd.errors import PayloadError

# An absent Raw field decodes to this empty value (msgspec cannot express Raw | None).
_ABSENT = msgspec.Raw(b"")

# gc=False on the decoded types: they hold only decoded JSON values, which cannot form a
# reference cycle, and thousands are made per body (fewer collector passes while decoding).


class EventData(msgspec.Struct, frozen=True, gc=False):
    """The ``data`` member of a CloudEvent (lead activity, user audit or notification)."""

    munchkinId: Any = None
    leadId: Any = None
    activityDate: Any = None
    activityTypeId: Any = None


class CloudEvent(msgspec.Struct, frozen=True, gc=False):
    """A CloudEvent, or the ``event`` member of a wrapper (which may hold one as ``body``)."""

    id: Any = None
    type: Any = None
    time: Any = None
    data: EventData | None = None
    body: CloudEvent | None = None  # present only in the {"event": {"body": ...}} wrapper


class Item(msgspec.Struct, frozen=True, gc=False):
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


class LegacyActivity(msgspec.Struct, frozen=True, gc=False):
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


# -- the bytes before any decoder ----------------------------------------------------------

MAX_DEPTH = 64  # Adobe and Marketo payloads nest 5 levels; msgspec recurses per level
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_NOT_BRACKETS = _NOT_MARKS + b'"'
_SMALL = 4096  # bytes: a body this small usually has too few brackets to need more
_SIGNS = bytes.maketrans(b"[]", b"\x01\xff")  # read back as signed bytes: +1, -1
_ROUNDS = 16  # typical bodies empty in 4-6 rounds; deeper or larger ones take the exact sum
_ROUNDS_MAX = 1 << 16  # brackets; past this a round costs more than the exact sum


def check_depth(data: bytes, limit: int = MAX_DEPTH, where: str = "$") -> None:
    """Raise :class:`PayloadError` when ``data`` nests arrays and objects deeper than
    ``limit`` levels; brackets inside strings do not count.

    Iterative C-speed byte operations only, so the verdict is the same for the same bytes
    whatever the caller's stack depth (msgspec's own recursion is not: it hits Python's
    recursion limit at a depth that depends on the caller). For malformed JSON the depth
    counted is never less than what a decoder would recurse into before it fails.
    """
    if len(data) <= _SMALL and len(data.translate(None, _NOT_BRACKETS)) <= limit:
        return  # a single event, say: string brackets only add, too few to nest deeper
    if b"\\" in data:
        # A lexer reads escapes in pairs from the left: so do these two passes. What is
        # left has no escaped quote, so every quote opens or closes a string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(_SQUARE, _NOT_MARKS)  # quotes and brackets ({} as [])
    brackets = marks.translate(None, b'"')
    if len(brackets) <= limit:
        return  # string brackets only add: fewer than `limit` cannot nest deeper
    if len(marks) - len(brackets) != 2 * marks.count(b'""'):
        # A run of quotes of odd length: some string holds a bracket (or never ends).
        # Keep what lies outside strings: the segments between quote pairs.
        brackets = b"".join(marks.split(b'"')[::2])
    if b"[" * (limit + 1) in brackets:
        raise PayloadError(f"{where}: JSON nested deeper than {limit} levels")
    if len(brackets) <= _ROUNDS_MAX:
        # Each round removes the innermost level everywhere: empty after n rounds means
        # balanced and n levels deep at most.
        rest = brackets
        for _ in range(min(limit, _ROUNDS)):
            shorter = rest.replace(b"[]", b"")
            if not shorter:
                return
            if len(shorter) == len(rest):
                break  # unbalanced: malformed, but how deep before it fails?
            rest = shorter
    # Exact: the largest running sum of +1 per opening and -1 per closing bracket.
    if max(accumulate(memoryview(brackets.translate(_SIGNS)).cast("b"))) > limit:
        raise PayloadError(f"{where}: JSON nested deeper than {limit} levels")


# Possessive quantifiers: a container or string cut off at `offset` fails at once instead
# of backtracking through every way to split it.
_TOKEN = re.compile(
    rb"""
      (?P<flat>[{\[] (?:[^"\[\]{}]++ | "[^"\\]*+(?:\\.[^"\\]*+)*+")*+ [}\]])  # a whole
                                                             # innermost container
    | (?P<string>"[^"\\]*+(?:\\.[^"\\]*+)*+(?P<end>")?)
    | [^"\[\]{},:]++
    | .
    """,
    re.VERBOSE | re.DOTALL,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOCATE_LIMIT = 1 << 20  # bytes read to name a path; past them, only the byte is named


def json_path_at(data: bytes, offset: int) -> str | None:
    """The JSON path, relative to the root of ``data`` (``""``, ``.a[3].b``), of the value
    or member that holds byte ``offset``; ``None`` past :data:`LOCATE_LIMIT` bytes.

    For error messages only: it reads ``data`` up to ``offset`` with a regex tokenizer and
    a stack (no recursion), and is lenient with JSON that is malformed before ``offset``.
    """
    if offset > LOCATE_LIMIT:
        return None
    # One frame per open container: [is an object, its current key or index, awaiting a key]
    stack: list[list[Any]] = []
    for token in _TOKEN.finditer(data, 0, offset):
        kind = token.lastgroup
        if kind == "flat":
            continue  # a whole value before `offset`: nothing of it is on the path
        text = token.group()
        if kind == "string":
            frame = stack[-1] if stack else None
            # A member name read whole; one cut off at `offset` is where the fault is.
            if frame is not None and frame[0] and frame[2] and token.group("end"):
                frame[1] = text[1:-1]
        elif text == b"{":
            stack.append([True, None, True])
        elif text == b"[":
            stack.append([False, 0, False])
        elif text == b"]" or text == b"}":
            if stack:
                stack.pop()
        elif text == b"," and stack:
            frame = stack[-1]
            if frame[0]:
                frame[1], frame[2] = None, True
            else:
                frame[1] += 1
        elif text == b":" and stack:
            stack[-1][2] = False
    parts = []
    for is_object, at, _ in stack:
        if not is_object:
            parts.append(f"[{at}]")
        elif at is not None:
            parts.append(_member(at))
    return "".join(parts)


def _member(key: bytes) -> str:
    name = key.decode("utf-8", "replace")
    if _NAME.fullmatch(name):
        return "." + name
    return "[" + msgspec.json.encode(name[:64]).decode() + "]"


# -- a decoder's error, as the sender is told it -------------------------------------------


def decode_failure(exc: msgspec.DecodeError, data: bytes | msgspec.Raw, path: str) -> PayloadError:
    """The :class:`PayloadError` for a decoder's error on ``data`` (the JSON at ``path``).

    Names the field: msgspec's own path for a value of the wrong type or out of range;
    for invalid UTF-8 and malformed JSON, the path of the value holding the bad byte.
    """
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):  # a subclass of DecodeError
        problem, _, where = message.partition(" - at `")
        field = path + where.removesuffix("`")[1:]  # msgspec's "$.a.b", relative to data
        return PayloadError(f"{field}: {problem[:1].lower()}{problem[1:]}")
    text = bytes(data)
    if message.startswith("Invalid UTF-8"):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as error:
            return utf8_failure(text, error.start, path)
    offset, problem = len(text), message
    found = _BYTE.search(message)
    if found:
        offset, problem = int(found[1]), message[: found.start()]
    if "escape" in message or "surrogate" in message or "truncated" in message:
        # msgspec names a lone high surrogate escape in several ways ("truncated",
        # "unexpected end of hex escape", ...), depending on what follows it.
        lone = _LONE_SURROGATE.search(text, 0, offset + 7)
        if lone:
            offset, problem = lone.start(1), "a lone UTF-16 surrogate escape"
    return PayloadError(
        f"{_field(text, offset, path)}: not valid JSON: {problem} ({_where(offset, path)})"
    )


_BYTE = re.compile(r" \(byte (\d+)\)$")
# A \uD800-\uDBFF escape (after an even run of backslashes) with no low half after it.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def utf8_failure(text: bytes, offset: int, path: str) -> PayloadError:
    """The :class:`PayloadError` for invalid UTF-8 at byte ``offset`` of ``text`` (at ``path``)."""
    field = _field(text, offset, path)
    return PayloadError(f"{field}: invalid UTF-8 ({_where(offset, path)}): not valid JSON")


def _field(text: bytes, offset: int, path: str) -> str:
    inner = json_path_at(text, offset)
    return path if inner is None else path + inner


def _where(offset: int, path: str) -> str:
    # msgspec's own wording, "(byte N)", for the body; a nested value's bytes are its own.
    return f"byte {offset}" if path == "$" else f"byte {offset} of {path}"
