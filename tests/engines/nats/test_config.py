"""[sinks.nats] as hostile input: one clear message each, no traceback; an unreachable
cluster is no reason to refuse to start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import load_config
from streamd.service.sinks import build_specs
from tests.system._harness import clean_env, free_port, streamd_argv

BASE = "[[sinks]]\nname = 'bus'\nkind = 'nats'\n[sinks.nats]\n"
SERVERS = "servers = ['nats://127.0.0.1:4222']\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "streamd.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "sinks[0].nats: object missing required field `servers`"),
        ("servers = []\n", "servers"),
        ("servers = ['127.0.0.1:4222']\n", "is not a nats:// or tls:// URL"),
        ("servers = ['http://x:4222']\n", "is not a nats:// or tls:// URL"),
        (SERVERS + "subject = 'streamd.{lead}'\n", "{lead} is not a placeholder streamd fills"),
        (SERVERS + "subject = 'streamd.{type!r}'\n", "is not a placeholder"),
        (SERVERS + "subject = 'streamd.{stream'\n", "is not a template"),
        (SERVERS + "subject = 'streamd.*.{type}'\n", "no spaces, '*' or '>'"),
        (SERVERS + "subject = 'streamd events.{type}'\n", "no spaces"),
        (SERVERS + "subject = 'streamd..{type}'\n", "no empty token"),
        (SERVERS + "subject = 'streamd.{type}.'\n", "no empty token"),
        (SERVERS + "subject = '{stream}.{type}'\n", "begin with a literal token"),
        (SERVERS + "stream = 'a.b'\n", "stream"),
        (SERVERS + "stream = 'A B'\n", "stream"),
        (SERVERS + "duplicate_window = 0.5\n", "duplicate_window"),
        (SERVERS + "duplicate_window = 1e9\n", "duplicate_window"),
        (SERVERS + "replicas = 0\n", "replicas"),
        (SERVERS + "replicas = 7\n", "replicas"),
        (SERVERS + "token_file = 't'\ncredentials_file = 'c'\n", "set one of them, not both"),
        (SERVERS + "manage_streams = true\n", "manage_streams"),
    ],
)
def test_bad_nats_tables(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, BASE + body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(path + ": ")
    assert message in str(info.value)


def test_a_varying_first_token_is_fine_when_the_stream_is_the_operators(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + SERVERS + "subject = '{stream}.{type}'\n"
                                                          "manage_stream = false\n"))  # fmt: skip
    assert config.sinks[0].nats is not None


def test_a_missing_token_file_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + SERVERS + f"token_file = '{tmp_path}/nope'\n"))
    with pytest.raises(ConfigError, match="nope"):
        build_specs(config)


def test_check_config_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + SERVERS + "subject = 'a..{type}'\n")
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", path],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "nats.subject" in done.stderr and "Traceback" not in done.stderr


def test_check_config_accepts_an_unreachable_cluster(tmp_path: Path) -> None:
    # Nothing listens there: the daemon would start and buffer; so check-config passes.
    path = write(tmp_path, BASE + f"servers = ['nats://127.0.0.1:{free_port()}']\n")
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", path, "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
