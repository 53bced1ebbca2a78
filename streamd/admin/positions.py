"""The positions of ``GET /journal``: opaque to clients, checked against the journal.

A position is ``JOURNAL.SEQ.CHECK``, e.g. ``5d1c09a2.124.9b0c77d1``:

- ``JOURNAL``: the first 8 hex digits of the journal's ``journal_id`` (``meta``), random
  per journal, so a position of another journal (a replaced one) is recognised;
- ``SEQ``: the event's ``seq``;
- ``CHECK``: 8 hex digits of a hash of the journal id, the ``seq``, and the event's
  key and receive time, so a journal restored from an older backup, which has since
  taken *other* events under the same ``seq``, is recognised too. The start of a
  journal (``seq`` 0) has no event and no check: ``5d1c09a2.0``.

A position that does not name this journal, lies beyond its newest event, or names
an event this journal does not hold at that ``seq`` cannot be continued from without
skipping events silently: :class:`PositionGone` (410). A bare ``SEQ`` (the form before
positions carried the journal) is still accepted, as far as it can be checked: beyond
the newest event it is a 410 as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import Final

from streamd.errors import StreamdError, UsageError

MAX_SEQ: Final = 2**63 - 1
MAX_POSITION_CHARS: Final = 64
JOURNAL_CHARS: Final = 8
_FULL: Final = re.compile(r"([0-9a-f]{8})\.([0-9]+)(?:\.([0-9a-f]{8}))?")
_BARE: Final = re.compile(r"[0-9]+")
_RESTART: Final = "start again without since (from the oldest event kept) or with latest=true"


class PositionGone(StreamdError):
    """A position that cannot be continued from in this journal: 410, as Adobe's journal
    answers a position it no longer has (the SDK's journaling client raises it)."""

    status_hint = 410


@dataclass(frozen=True, slots=True)
class Position:
    """A ``since`` as given: ``journal`` and ``check`` are None for a bare ``SEQ``."""

    text: str
    seq: int
    journal: str | None = None
    check: str | None = None


def parse_position(text: str, what: str = "since") -> Position:
    """The position ``text`` spells; :class:`UsageError` (400) naming ``what`` otherwise."""
    if len(text) > MAX_POSITION_CHARS:
        raise UsageError(
            f"{what}: a position is at most {MAX_POSITION_CHARS} characters, "
            f"this one has {len(text)}"
        )
    shown = repr(text[:MAX_POSITION_CHARS])
    if not text.isascii() or not text.isprintable():
        raise UsageError(
            f"{what}: {shown} is not a position: positions are ASCII digits, "
            "lowercase hex letters and dots"
        )
    full = _FULL.fullmatch(text)
    if full is not None:
        journal, digits, check = full.groups()
    elif _BARE.fullmatch(text):
        journal, digits, check = None, text, None
    else:
        raise UsageError(
            f"{what}: {shown} is not a position: expected JOURNAL.SEQ.CHECK as this "
            'journal gives it (an event\'s "position", "_page.last" or the next link), '
            "e.g. 5d1c09a2.124.9b0c77d1"
        )
    seq = int(digits)  # at most 64 digits: cheap
    if seq > MAX_SEQ:
        raise UsageError(f"{what}: {shown}: the sequence number is larger than {MAX_SEQ}")
    if seq == 0 and check is not None:
        raise UsageError(f"{what}: {shown}: the start of a journal (0) carries no check")
    return Position(text, seq, journal, check)


def check_of(journal_id: str, seq: int, event_key: str, received_at: str) -> str:
    """The ``CHECK`` of the event at ``seq``: it changes when another event takes ``seq``."""
    digest = _keyed(journal_id).copy()  # a copy of the hashed id: half the cost per event
    digest.update(f"{seq}\x00{event_key}\x00{received_at}".encode())
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _keyed(journal_id: str) -> blake2b:
    return blake2b(f"{journal_id}\x00".encode(), digest_size=4)


def encode(journal_id: str, seq: int, event: tuple[str, str] | None) -> str:
    """The position of ``seq``; ``event`` is its ``(event_key, received_at)`` (None: no
    event there, as at the start)."""
    prefix = f"{journal_id[:JOURNAL_CHARS]}.{seq}"
    if event is None:
        return prefix
    return f"{prefix}.{check_of(journal_id, seq, *event)}"


def verify(
    position: Position,
    journal_id: str,
    newest: int,
    oldest: int | None,
    event: tuple[str, str] | None,
) -> None:
    """Raise :class:`PositionGone` unless reading on after ``position`` skips nothing.

    ``newest``/``oldest``: the journal's newest and oldest ``seq`` (``oldest`` None when
    it is empty); ``event``: ``(event_key, received_at)`` of the event at the
    position's ``seq`` (None when none is there).
    """
    text, seq = position.text, position.seq
    mine = journal_id[:JOURNAL_CHARS]
    if position.journal is not None and position.journal != mine:
        raise PositionGone(
            f"position {text} was given by another journal ({position.journal}), not this "
            f"one ({mine}): the journal was replaced, so nothing here continues it; {_RESTART}"
        )
    if seq > newest:
        raise PositionGone(
            f"position {text} is beyond the newest event of this journal (seq {newest}): "
            "the journal was restored from an older backup or replaced, and the events up "
            f"to that position are not here; {_RESTART}"
        )
    if oldest is not None and seq < oldest - 1:
        # Retention deleted what came after this position: as Adobe's journal does
        # for positions past its 7 days.
        raise PositionGone(
            f"position {text} is older than the oldest event kept (seq {oldest}; retention "
            f"deleted the events after it); {_RESTART}"
        )
    if position.journal is None or seq == 0:
        return  # a bare seq cannot be checked further; the start is the start
    if event is None:
        # Only the event just before the oldest kept one can be missing (retention
        # never deletes the newest): nothing after it is lost.
        return
    if position.check != check_of(journal_id, seq, *event):
        raise PositionGone(
            f"position {text} names an event this journal does not hold at seq {seq}: "
            "the journal was restored from an older backup and has taken other events "
            f"since, which a reader of that position never saw; {_RESTART}"
        )
