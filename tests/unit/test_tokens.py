"""API tokens: files, generation, constant-time checks, and where a token may be."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streamd.auth import (
    TokenSet,
    ensure_token_file,
    loose_permissions,
    read_token_file,
    token_from_request,
)
from streamd.errors import ConfigError

GOOD = "t0k3n-" + "a" * 20


def test_generated_token_file_is_private_and_readable(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "api-token")
    token = ensure_token_file(path)
    assert token is not None and len(token) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_token_file(path) == [token]
    assert not loose_permissions(path)
    # Second start: nothing generated, nothing printed.
    assert ensure_token_file(path) is None
    assert not [p for p in os.listdir(tmp_path / "sub") if ".tmp-" in p]


def test_rotation_several_tokens_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# current\n{GOOD}\n\n  {GOOD}-next  \n")
    assert read_token_file(str(path)) == [GOOD, GOOD + "-next"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no token"),
        (b"# only a comment\n", "holds no token"),
        (b"short\n", ":1: a token must have 16 to 512 characters"),
        (b"x" * 600, ":1: a token must have 16"),
        (b"\xff\xfe binary", "not ASCII text"),
        (
            GOOD.encode() + b"\nwith space inside tok\n",
            ":2: a token must be printable, without spaces",
        ),
        (b"a" * (64 * 1024 + 1), "larger than 65536 bytes"),
    ],
)
def test_bad_token_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_token_file(str(path))
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the token file"):
        read_token_file(str(tmp_path / "absent"))


def test_loose_permissions_detected(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(GOOD)
    path.chmod(0o644)
    assert loose_permissions(str(path))


def test_token_set_checks_every_token() -> None:
    tokens = TokenSet([GOOD, GOOD + "2"])
    assert tokens.check(GOOD)
    assert tokens.check((GOOD + "2").encode())
    assert not tokens.check(GOOD[:-1])
    assert not tokens.check(GOOD + "x")
    assert not tokens.check("")
    assert not tokens.check(None)
    with pytest.raises(ConfigError):
        TokenSet([])


@pytest.mark.parametrize(
    ("authorization", "query", "allow_query", "expected"),
    [
        (b"Bearer abc", b"", True, b"abc"),
        (b"bearer   abc ", b"", True, b"abc"),
        (b"BEARER abc", b"", True, b"abc"),
        (b"abc", b"", True, b"abc"),
        (None, b"access_token=abc", True, b"abc"),
        (None, b"x=1&access_token=abc%2B", True, b"abc+"),
        (None, b"access_token=abc", False, None),
        (None, b"", True, None),
        (b"Bearer hdr", b"access_token=qry", True, b"hdr"),
        (None, b"&".join([b"a=1"] * 60) + b"&access_token=abc", True, None),
    ],
)
def test_where_a_token_may_be(
    authorization: bytes | None, query: bytes, allow_query: bool, expected: bytes | None
) -> None:
    assert token_from_request(authorization, query, allow_query=allow_query) == expected
