"""[sinks.kafka] configuration: each mistake is one clear message, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import load_config
from tests.system._harness import clean_env, streamd_argv

BOOTSTRAP = 'bootstrap_servers = ["127.0.0.1:9092"]\n'


def write(tmp_path: Path, kafka: str) -> str:
    path = tmp_path / "streamd.toml"
    path.write_text(f'[[sinks]]\nname = "k"\nkind = "kafka"\n{kafka}')
    return str(path)


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ("", "sinks[0].kafka: a kafka sink needs a [sinks.kafka] table"),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}topic = "x.{{stream}}.{{lead}}"\n',
            "sinks[0].kafka.topic: {lead} is not a placeholder streamd fills; "
            "use {stream}, {type}, {source}, {munchkin_id}",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}topic = "x.{{stream"\n',
            "sinks[0].kafka.topic: 'x.{stream' is not a template",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}topic = "x.{{stream:>9}}"\n',
            "sinks[0].kafka.topic: {stream} is not a placeholder streamd fills",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}properties = {{ "acks" = "1" }}\n',
            "sinks[0].kafka.properties: 'acks' is set by streamd",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}properties = {{ "enable.idempotence" = "false" }}\n',
            "sinks[0].kafka.properties: 'enable.idempotence' is set by streamd",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}properties = {{ "message.timeout.ms" = "1" }}\n',
            "sinks[0].kafka.properties: 'message.timeout.ms' is set by streamd",
        ),
        (
            f'[sinks.kafka]\n{BOOTSTRAP}properties = {{ "sasl.password" = "hunter2" }}\n',
            "use kafka.password_file",
        ),
        (f'[sinks.kafka]\n{BOOTSTRAP}key = "partition"\n', "sinks[0].kafka.key"),
        ("[sinks.kafka]\nbootstrap_servers = []\n", "sinks[0].kafka.bootstrap_servers"),
        (
            '[sinks.kafka]\nbootstrap_servers = ["kafka://b:9092"]\n',
            "sinks[0].kafka.bootstrap_servers: 'kafka://b:9092' is not HOST:PORT",
        ),
        (f"[sinks.kafka]\n{BOOTSTRAP}partitions = 3\n", "sinks[0].kafka"),
    ],
)
def test_kafka_config_errors(tmp_path: Path, kafka: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, kafka))
    assert message in str(caught.value)


def test_a_password_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    config = write(tmp_path, f'[sinks.kafka]\n{BOOTSTRAP}password_file = "{tmp_path}/nope"\n')
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", config],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"streamd: configuration error: {tmp_path}/nope: cannot read the password: "
        "No such file or directory"
    ]


def test_check_config_accepts_a_full_kafka_sink(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    config = write(
        tmp_path,
        '[sinks.kafka]\nbootstrap_servers = ["b1:9092", "b2:9092"]\n'
        'topic = "marketo.{munchkin_id}.{stream}"\nkey = "lead"\n'
        f'password_file = "{tmp_path}/pw"\n'
        '[sinks.kafka.properties]\n"security.protocol" = "SASL_SSL"\n'
        '"sasl.mechanism" = "SCRAM-SHA-512"\n"sasl.username" = "streamd"\n',
    )
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", config],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sinks: k (kafka)" in done.stdout
    assert "Traceback" not in done.stderr


def test_the_drain_reads_columns_not_envelopes_for_kafka(tmp_path: Path) -> None:
    """The producer process builds each message's envelope from the columns and the
    event's JSON: the daemon's reader must not build them too (about 6 µs an event,
    read under the daemon's GIL)."""
    from streamd.service.sinks import build_specs

    config = load_config(write(tmp_path, '[sinks.kafka]\nbootstrap_servers = ["b1:9092"]\n'))
    [spec] = build_specs(config)
    assert (spec.full_events, spec.envelopes) == (True, False)
