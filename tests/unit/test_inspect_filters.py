"""Filter parsing: what each flag accepts, and a precise error for everything else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamd.errors import UsageError
from streamd.inspect.filters import (
    ACTIVITY_TYPES,
    Filters,
    parse_activity_type,
    parse_filters,
    parse_time,
    parse_where,
)

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", "2026-11-30T10:00:00.000Z"),
        ("90s", "2026-11-30T11:58:30.000Z"),
        ("1h30m", "2026-11-30T10:30:00.000Z"),
        ("7d", "2026-11-23T12:00:00.000Z"),
        ("1w", "2026-11-23T12:00:00.000Z"),
        ("2026-11-01T00:00Z", "2026-11-01T00:00:00.000Z"),
        ("2026-11-01", "2026-11-01T00:00:00.000Z"),
        ("2026-11-01 08:00:00+02:00", "2026-11-01T06:00:00.000Z"),
        ("2026-11-01T08:00:00.250", "2026-11-01T08:00:00.250Z"),
    ],
)
def test_times(text: str, expected: str) -> None:
    assert parse_time(text, NOW, "--since") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a duration"),
        ("2x", "'2x' is not a duration or a time"),
        ("-2h", "is not a duration"),
        ("h", "is not a duration"),
        ("99999999w", "is not a duration"),  # more digits than allowed
        ("9999999w", "reaches before year 1"),
        ("2026-13-45", "is not a valid time"),
        ("2026-11-01T25:00Z", "is not a valid time"),
        ("2h; DROP TABLE events", "is not a duration"),
        ("x" * 100, "expected a duration"),
    ],
)
def test_bad_times(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="--since: .*" + message.replace("(", r"\(")):
        parse_time(text, NOW, "--since")


@pytest.mark.parametrize(
    ("text", "type_id"),
    [("13", 13), ("Change Data Value", 13), ("changedatavalue", 13), ("open_email", 10),
     ("100001", 100001), (" 1 ", 1)],
)  # fmt: skip
def test_activity_types_by_id_or_name(text: str, type_id: int) -> None:
    assert parse_activity_type(text) == type_id


def test_every_contract_activity_name_resolves() -> None:
    for type_id, name in ACTIVITY_TYPES.items():
        assert parse_activity_type(name) == type_id
        assert parse_activity_type(name.upper()) == type_id


@pytest.mark.parametrize("text", ["Change Data", "13a", "-1", "1e3", "99999999999999999999"])
def test_bad_activity_types(text: str) -> None:
    with pytest.raises(UsageError, match="--activity-type"):
        parse_activity_type(text)


@pytest.mark.parametrize(
    ("text", "path", "legacy", "glob"),
    [
        ("data.primaryAttributeValue=Spring*", "$.data.primaryAttributeValue",
         "$.primaryAttributeValue", "Spring*"),
        ("$.data.attributes[0].value=5012", "$.data.attributes[0].value", None, "5012"),
        ("data.attributes[1].name=Old*", "$.data.attributes[1].name", "$.attributes[1].name",
         "Old*"),
        ("type=com.*", "$.type", None, "com.*"),
        ('$."odd key".x=a=b', '$."odd key".x', None, "a=b"),
        ("eventid=", "$.eventid", None, ""),
    ],
)  # fmt: skip
def test_where(text: str, path: str, legacy: str | None, glob: str) -> None:
    match = parse_where(text)
    assert (match.path, match.legacy_path, match.glob) == (path, legacy, glob)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data.x", "is not PATH=VALUE"),
        ("=x", "is not PATH=VALUE"),
        ("$=x", "is not a JSON path"),
        ("$.a..b=x", "is not a JSON path"),
        ("$.a[x]=1", "is not a JSON path"),
        ("a b=1", "is not a field path"),
        ("x'); DROP TABLE events;--=1", "is not a field path"),
        ('$."a\\"b"=1', "is not a JSON path"),
        ("a=\x07", "control characters"),
        ("a" * 300 + "=1", "too long"),
    ],
)
def test_bad_where(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_where(text)


def test_filters_combine_and_bind_every_value() -> None:
    f = parse_filters(
        now=NOW,
        stream=["activity"],
        type=["*.openemail", "com.adobe.platform.marketo.activity.custom"],
        activity_type=["10,Change Data Value"],
        lead=["4412", "1234"],
        munchkin=["123-ABC-456"],
        source=["adobe-io"],
        since="2h",
        where=["data.primaryAttributeValue=Spring*"],
    )
    sql, params = f.where_sql()
    assert "4412" not in sql and "Spring" not in sql and "adobe-io" not in sql
    assert sql.count("?") == len(params)
    assert params[:3] == ["activity", "*.openemail", "com.adobe.platform.marketo.activity.custom"]
    assert f.activity_type_ids == (10, 13) and f.lead_ids == (4412, 1234)


@pytest.mark.parametrize(
    ("types", "streams"),
    [
        (["com.adobe.platform.marketo.activity.standard.openemail"], ("activity",)),
        (["com.adobe.platform.marketo.audit.*"], ("audit",)),
        (["*.openemail"], ("activity", "audit", "notification", "other")),
        (["my.own.type"], ("other",)),
    ],
)
def test_a_type_filter_names_its_stream_for_the_index(
    types: list[str], streams: tuple[str, ...]
) -> None:
    _, params = parse_filters(now=NOW, type=types).where_sql()
    assert tuple(params[: len(streams)]) == streams


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stream": ["activities"]}, "--stream: 'activities' is not one of"),
        ({"lead": ["12; DROP TABLE events"]}, "--lead: .* is not a whole number"),
        ({"lead": ["-5"]}, "--lead"),
        ({"lead": ["99999999999999999999"]}, "--lead"),
        ({"since": "2h", "until": "3h"}, "is not before --until"),
        ({"munchkin": ["x" * 600]}, "--munchkin: expected 1 to 512"),
        ({"source": ["a\nb"]}, "--source: .* control characters"),
        ({"lead": [",".join(["1"] * 101)]}, "at most 100 values"),
        ({"clock": "wall"}, "--clock"),
        ({"where": ["a=1"] * 21}, "at most 20"),
    ],
)
def test_bad_filters(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_filters(now=NOW, **kw)  # type: ignore[arg-type]


def test_empty_filters_match_everything() -> None:
    assert Filters().where_sql() == ("1", [])
    assert parse_filters(now=NOW).is_empty()
