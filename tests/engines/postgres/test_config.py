"""Bad [sinks.postgres] configuration: one clear message each, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import load_config
from tests.system._harness import clean_env, streamd_argv

GOOD = '[[sinks]]\nname = "pg"\nkind = "postgres"\n[sinks.postgres]\ndsn = "host=db1 dbname=m"\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "streamd.toml"
    path.write_text(text)
    return str(path)


def test_a_good_table_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + 'table = "marketing.events"\n'))
    assert config.sinks[0].postgres is not None
    assert config.sinks[0].postgres.table == "marketing.events"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("host=db1 dbname=m", "host=db1 password=x"), "holds a password"),
        (GOOD.replace("host=db1 dbname=m", "postgresql://u:secret@db1/m"), "holds a password"),
        (GOOD.replace("host=db1 dbname=m", "postgresql://db1/m?password=x"), "holds a password"),
        (GOOD.replace("host=db1 dbname=m", "host=db1 dbnam=m"), "not a libpq connection string"),
        (GOOD.replace("host=db1 dbname=m", "host='db1"), "not a libpq connection string"),
        (GOOD.replace("host=db1 dbname=m", "  "), "postgres.dsn: must not be empty"),
        (GOOD + 'table = "a.b.c"\n', "postgres.table"),
        (GOOD + 'table = "1events"\n', "postgres.table"),
        (GOOD + 'table = "events; DROP TABLE x"\n', "postgres.table"),
        (GOOD + "connect_timeout = 0\n", "postgres.connect_timeout"),
        (GOOD + "schema = 1\n", "schema"),
        ('[[sinks]]\nname = "pg"\nkind = "postgres"\n', "a postgres sink needs a [sinks.postgres]"),
        (GOOD.replace('kind = "postgres"', 'kind = "stdout"'), "only for kind = 'postgres'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)


def test_check_config_says_it_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("host=db1 dbname=m", "postgresql://u:pw@db1/m"))
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", path],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "postgres.dsn: holds a password" in done.stderr
    assert "pw" not in done.stderr.replace("password", "")


def test_an_unreachable_server_is_no_config_error(tmp_path: Path) -> None:
    # Checked without connecting: the daemon starts and the journal buffers.
    path = write(tmp_path, GOOD.replace("host=db1", "host=127.0.0.1 port=1"))
    done = subprocess.run(
        [*streamd_argv(), "check-config", "--config", path],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_drain_reads_columns_not_envelopes_for_postgres(tmp_path: Path) -> None:
    """The sink stores the columns and the event's JSON apart: building each event's
    envelope for it (about 3 µs an event) would be work thrown away."""
    from streamd.service.sinks import build_specs

    [spec] = build_specs(load_config(write(tmp_path, GOOD)))
    assert (spec.full_events, spec.envelopes) == (True, False)
