"""Lenient timestamps: the documented odd formats parse; junk returns None."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.core import format_utc, normalise_timestamp, parse_timestamp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-02T09:14:01Z", "2026-05-02T09:14:01.000Z"),
        ("2024-07-11 13:20:42.755", "2024-07-11T13:20:42.755Z"),
        ("2021-05-27T10:22:37.489-05:00", "2021-05-27T15:22:37.489Z"),
        ("2021-05-27T10:22:37.489-5:00", "2021-05-27T15:22:37.489Z"),
        ("2020-05-28T19:20:47.28Z", "2020-05-28T19:20:47.280Z"),
        ("2020-05-28T19:20:47.123456789+0530", "2020-05-28T13:50:47.123Z"),
        ("2020-05-28T19:20:47+05", "2020-05-28T14:20:47.000Z"),
        ("2020-05-28t19:20:47z", "2020-05-28T19:20:47.000Z"),
        ("2020-05-28T19:20Z", "2020-05-28T19:20:00.000Z"),
        ("2020-05-28", "2020-05-28T00:00:00.000Z"),
        ("2020-05-28 19:20:47 UTC", "2020-05-28T19:20:47.000Z"),
        ("2020-05-28T19:20:47,5Z", "2020-05-28T19:20:47.500Z"),
    ],
)
def test_documented_and_odd_formats(text: str, expected: str) -> None:
    assert normalise_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2020-13-01T00:00:00Z",
        "2020-02-30T00:00:00Z",
        "2020-01-01T25:00:00Z",
        "2020-01-01T00:00:00+24:00",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "2020-01-01T00:00:00Z trailing",
        "1" * 100,
    ],
)
def test_junk_is_none_not_an_error(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize("value", [None, 5, 1.5, ["2020-01-01"], {"a": 1}])
def test_non_strings_are_none(value: object) -> None:
    assert normalise_timestamp(value) is None


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_isoformat_roundtrips_to_the_same_instant(moment: datetime, offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    text = moment.astimezone(zone).isoformat()
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert parsed == moment
    assert format_utc(parsed) == format_utc(moment)
    assert format_utc(parsed).endswith("Z")
