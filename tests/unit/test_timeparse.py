"""Lenient timestamps: the documented odd formats parse; junk returns None."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.core import format_utc, normalise_timestamp, parse_timestamp
from streamd.core.timeparse import (
    TimeError,
    format_seek,
    parse_iso_duration,
    parse_seek,
    parse_when,
)


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


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("-PT2H", timedelta(hours=2)),
        ("-PT30M", timedelta(minutes=30)),
        ("-PT90S", timedelta(seconds=90)),
        ("-PT1.5S", timedelta(seconds=1.5)),
        ("-PT0S", timedelta(0)),
        ("-P1D", timedelta(days=1)),
        ("-P1DT30M", timedelta(days=1, minutes=30)),
        ("-P2W", timedelta(weeks=2)),
        ("-P1DT2H3M4,25S", timedelta(days=1, hours=2, minutes=3, seconds=4.25)),
    ],
)
def test_seek_is_a_negative_iso_8601_duration(text: str, back: timedelta) -> None:
    assert parse_seek(text) == back


@pytest.mark.parametrize(
    "text",
    ["PT2H", "+PT2H", "-PT", "-P", "-P2X", "-P1Y", "-P1M", "-P1DT", "-pt2h", "-PT2H ", "2h", ""],
)
def test_anything_else_is_no_seek(text: str) -> None:
    with pytest.raises(TimeError, match="is not a negative ISO 8601 duration"):
        parse_seek(text)
    assert isinstance(TimeError("x"), ValueError)


@pytest.mark.parametrize(
    ("back", "text"),
    [
        (timedelta(hours=2), "-PT2H"),
        (timedelta(seconds=90), "-PT1M30S"),
        (timedelta(days=1, hours=2), "-PT26H"),
        (timedelta(0), "-PT0S"),
        (timedelta(seconds=1.5), "-PT1.5S"),
        (timedelta(hours=1, seconds=5), "-PT1H5S"),
        (timedelta(seconds=-5), "-PT0S"),  # the future: from now
    ],
)
def test_format_seek_writes_what_adobe_documents(back: timedelta, text: str) -> None:
    assert format_seek(back) == text


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000)))
def test_format_seek_reads_back(back: timedelta) -> None:
    assert parse_seek(format_seek(back)) == back


@pytest.mark.parametrize(
    ("text", "value"),
    [("PT2H", timedelta(hours=2)), ("-PT2H", -timedelta(hours=2)), ("P1W", timedelta(weeks=1))],
)
def test_iso_durations_keep_their_sign(text: str, value: timedelta) -> None:
    assert parse_iso_duration(text) == value


def test_an_iso_duration_with_more_digits_than_allowed_is_none() -> None:
    assert parse_iso_duration("P12345678D") is None
    assert parse_iso_duration("P1234567D") == timedelta(days=1234567)


NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        ("30d", datetime(2026, 10, 31, 12, 0, tzinfo=UTC)),
        ("15m", datetime(2026, 11, 30, 11, 45, tzinfo=UTC)),
        ("90s", datetime(2026, 11, 30, 11, 58, 30, tzinfo=UTC)),
        ("1w", datetime(2026, 11, 23, 12, 0, tzinfo=UTC)),
        ("1h30m", datetime(2026, 11, 30, 10, 30, tzinfo=UTC)),
        (" 2h ", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        ("PT2H", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),  # that long ago, too
        ("-PT2H", datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        ("-P1D", datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),
        ("P1DT30M", datetime(2026, 11, 29, 11, 30, tzinfo=UTC)),
        ("-PT1.5S", datetime(2026, 11, 30, 11, 59, 58, 500_000, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),  # a date: midnight UTC
        ("2026-11-01T08:00", datetime(2026, 11, 1, 8, tzinfo=UTC)),  # no zone: UTC
        ("2026-11-01T08:00Z", datetime(2026, 11, 1, 8, tzinfo=UTC)),
        ("2026-11-01T08:00:00+02:00", datetime(2026, 11, 1, 6, tzinfo=UTC)),
        ("2026-11-01 08:00:00.250", datetime(2026, 11, 1, 8, 0, 0, 250_000, tzinfo=UTC)),
        ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC)),  # the future is a time too
    ],
)
def test_the_one_time_grammar(text: str, expected: datetime) -> None:
    when = parse_when(text, NOW)
    assert when == expected and when.tzinfo is UTC


def test_now_in_another_zone_gives_the_same_instant() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    assert parse_when("2h", paris) == parse_when("2h", NOW)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a duration back from now"),
        ("yesterday", "'yesterday' is not a duration or a time: expected a duration back"),
        ("2x", "'2x' is not a duration or a time"),
        ("-2h", "is not a duration or a time"),
        ("P1Y", "'P1Y' is not a duration or a time"),
        ("-PT", "is not a duration or a time"),
        ("99999999w", "is not a duration or a time"),
        ("9999999w", "'9999999w' reaches before year 1"),
        ("P9999999W", "reaches before year 1"),
        ("2026-13-45", "'2026-13-45' is not a valid time"),
        ("2026-11-01T25:00Z", "is not a valid time"),
        ("2h; DROP TABLE events", "is not a duration or a time"),
        ("x" * 100, "expected a duration back from now"),
    ],
)
def test_anything_else_is_one_line_naming_the_forms(text: str, message: str) -> None:
    with pytest.raises(TimeError) as caught:
        parse_when(text, NOW)
    text_of = str(caught.value)
    assert message in text_of and "\n" not in text_of
    assert isinstance(caught.value, ValueError)
    if "year 1" not in message:
        assert "90s, 15m, 2h, 30d" in text_of and "PT2H, -P1D" in text_of
        assert "2026-11-01T08:00Z" in text_of and "no zone means UTC" in text_of
