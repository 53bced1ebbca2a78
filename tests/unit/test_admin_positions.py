"""The positions of GET /journal (streamd/admin/positions.py): form, parse, check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.admin.positions import (
    MAX_SEQ,
    PositionGone,
    check_of,
    encode,
    parse_position,
    verify,
)
from streamd.errors import UsageError

JID = "5d1c09a2" + "0" * 24
OTHER = "0123abcd" + "f" * 24
EVENT = ("guid-7", "2026-12-06T10:00:00.123Z")


@given(
    seq=st.integers(min_value=1, max_value=MAX_SEQ),
    key=st.text(min_size=1, max_size=60),
    received=st.text(min_size=1, max_size=30),
)
def test_an_encoded_position_parses_back_and_verifies(seq: int, key: str, received: str) -> None:
    text = encode(JID, seq, (key, received))
    assert len(text) <= 64 and text.isascii()
    position = parse_position(text)
    assert (position.journal, position.seq, position.check) == (JID[:8], seq, text[-8:])
    verify(position, JID, newest=seq, oldest=1, event=(key, received))


def test_the_check_names_the_journal_the_seq_and_the_event() -> None:
    base = check_of(JID, 7, *EVENT)
    others = {
        check_of(OTHER, 7, *EVENT),
        check_of(JID, 8, *EVENT),
        check_of(JID, 7, "guid-8", EVENT[1]),
        check_of(JID, 7, EVENT[0], "2026-12-06T10:00:00.124Z"),
    }
    assert base not in others and len(others) == 4
    assert encode(JID, 0, None) == "5d1c09a2.0"


@pytest.mark.parametrize(
    ("since", "newest", "oldest", "event", "fragment"),
    [
        # another journal's position: whatever this journal holds at that seq
        (encode(OTHER, 7, EVENT), 9, 1, EVENT, "was given by another journal (0123abcd)"),
        (encode(OTHER, 0, None), 0, None, None, "was given by another journal"),
        # beyond the newest event: full, bare, and on an empty journal
        (encode(JID, 7, EVENT), 6, 1, None, "is beyond the newest event of this journal (seq 6)"),
        ("7", 6, 1, None, "position 7 is beyond the newest event"),
        ("1", 0, None, None, "position 1 is beyond the newest event of this journal (seq 0)"),
        # another event at that seq, or one where none was when it was given
        (encode(JID, 7, EVENT), 9, 1, ("guid-x", EVENT[1]), "does not hold at seq 7"),
        (encode(JID, 7, None), 9, 1, EVENT, "does not hold at seq 7"),
        # retention deleted the events after it
        (encode(JID, 2, EVENT), 9, 5, None, "older than the oldest event kept (seq 5;"),
        ("2", 9, 5, None, "position 2 is older than the oldest event kept"),
    ],
)  # fmt: skip
def test_positions_that_would_skip_are_gone(
    since: str, newest: int, oldest: int | None, event: tuple[str, str] | None, fragment: str
) -> None:
    with pytest.raises(PositionGone) as caught:
        verify(parse_position(since), JID, newest, oldest, event)
    assert fragment in str(caught.value)
    assert PositionGone.status_hint == 410


@pytest.mark.parametrize(
    ("since", "newest", "oldest", "event"),
    [
        (encode(JID, 0, None), 0, None, None),  # the start of an empty journal
        (encode(JID, 0, None), 9, 1, None),
        (encode(JID, 9, EVENT), 9, 1, EVENT),  # at the end: the 204 case
        (encode(JID, 4, EVENT), 9, 5, None),  # where retention cut: nothing after it lost
        ("4", 9, 5, None),
        ("9", 9, 1, EVENT),  # a bare seq of an earlier streamd, up to the newest
        ("0", 0, None, None),
    ],
)
def test_positions_that_skip_nothing_continue(
    since: str, newest: int, oldest: int | None, event: tuple[str, str] | None
) -> None:
    verify(parse_position(since), JID, newest, oldest, event)


@pytest.mark.parametrize(
    "text", ["", "x", "-1", "1.2", "5d1c09a2", "5d1c09a2.1.", "5d1c09a2.1.9b0c77d", " 1", "1 "]
)
def test_malformed_positions(text: str) -> None:
    with pytest.raises(UsageError, match=r"^since: .* is not a position: expected JOURNAL"):
        parse_position(text)


def test_the_parameter_is_named() -> None:
    with pytest.raises(UsageError, match=r"^the lease's position: "):
        parse_position("x" * 65, "the lease's position")
