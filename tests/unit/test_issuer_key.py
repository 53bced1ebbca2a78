"""The embedded issuer's signing key: created once, read after; a place it cannot be
written or read is a one-line configuration error, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamd.auth.issuer import load_or_create_key
from streamd.errors import ConfigError


def test_created_once_then_read(tmp_path: Path) -> None:
    path = tmp_path / "oauth-signing-key"
    key = load_or_create_key(str(path))
    assert len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(str(path)) == key


def test_a_directory_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "oauth-signing-key"
    with pytest.raises(ConfigError, match="cannot create the OAuth signing key"):
        load_or_create_key(str(path))
    assert not path.parent.exists()


def test_a_short_or_unreadable_key_is_a_config_error(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 8)
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        load_or_create_key(str(short))
    directory = tmp_path / "a-directory"
    os.mkdir(directory)
    with pytest.raises(ConfigError, match="cannot read the OAuth signing key"):
        load_or_create_key(str(directory))
