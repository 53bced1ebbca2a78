"""``[[pulls]]``: decoding, validation errors that name the key, secrets read at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import load_config
from streamd.service.startup import build_pulls

BASE = """
[[pulls]]
name = "adobe-journal"
url = "https://events-va6.adobe.io/events/organizations/1/integrations/2/3"
org_id = "ORG@AdobeOrg"
client_id = "abc"
client_secret_file = "SECRET"
scope = "AdobeID,openid"
"""


def write(tmp_path: Path, text: str) -> str:
    secret = tmp_path / "secret"
    if not secret.exists():
        secret.write_text("s3cret-value\n")
    path = tmp_path / "streamd.toml"
    path.write_text(text.replace("SECRET", str(secret)))
    return str(path)


def test_a_pull_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + 'limit = 500\nstart = "-PT2H"\n'))
    (pull,) = config.pulls
    assert pull.ims_url == "https://ims-na1.adobelogin.com/ims/token/v3"
    assert (pull.limit, pull.start, pull.on_expired) == (500, "-PT2H", "oldest")
    ((identity, settings, _tokens, lease),) = build_pulls(config)
    assert settings.api_key == "abc" and settings.org_id == "ORG@AdobeOrg"
    assert identity == (pull, "s3cret-value", None) and lease is None
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('start = "yesterday"', r"pulls\[0\].start: 'yesterday': expected \"oldest\""),
        ('start = "-PT"', r"pulls\[0\].start"),
        ('on_expired = "never"', r"pulls\[0\].on_expired"),
        ("limit = 0", r"pulls\[0\].limit"),
        ("limit = 20000", r"pulls\[0\].limit"),
        ("min_wait = 500\nmax_wait = 10", r"pulls\[0\].min_wait: 500 is larger than max_wait"),
        ("backoff_base = 60\nbackoff_cap = 1", r"pulls\[0\].backoff_base"),
        ('ims_url = "ftp://x/"', r"pulls\[0\].ims_url: 'ftp://x/' is not an http\(s\) URL"),
        ("timeout = 0", r"pulls\[0\].timeout"),
        ("surprise = 1", r"pulls\[0\]: object contains unknown field `surprise`"),
    ],
)
def test_bad_pull_settings_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE + extra + "\n"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "adobe-journal"', 'name = "events"', "already the name of a source"),
        ('name = "adobe-journal"', 'name = "a b"', "is not a valid name"),
        ('url = "https', 'url = "file', r"pulls\[0\].url: .* is not an http\(s\) URL"),
        ('scope = "AdobeID,openid"', 'scope = ""', "pulls\\[0\\].scope: .*Developer Console"),
        ('org_id = "ORG@AdobeOrg"', 'org_id = "a\\nb"', r"pulls\[0\].org_id"),
        ('client_id = "abc"\n', "", r"pulls\[0\]: object missing required field `client_id`"),
    ],
)
def test_bad_pull_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE.replace(old, new)))


def test_two_pulls_need_two_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pulls\[1\].name: 'adobe-journal' is already"):
        load_config(write(tmp_path, BASE + BASE))


def test_a_missing_secret_or_ca_file_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE.replace("SECRET", str(tmp_path / "nope"))))
    with pytest.raises(ConfigError, match="nope: cannot read the pull client secret"):
        build_pulls(config)
    config = load_config(write(tmp_path, BASE + f'ca_file = "{tmp_path / "ca.pem"}"\n'))
    with pytest.raises(ConfigError, match="ca.pem: cannot load the CA of pull 'adobe-journal'"):
        build_pulls(config)


def test_a_relative_secret_comes_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pull-secret").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load_config(write(tmp_path, BASE.replace('"SECRET"', '"pull-secret"')))
    ((identity, _, _, _),) = build_pulls(config)
    assert identity == (config.pulls[0], "from-systemd", None)


def test_check_config_reads_the_pull_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamd.cli import main

    path = write(tmp_path, BASE)
    argv = ["check-config", "--config", path, "--data-dir", str(tmp_path / "d")]
    assert main(argv) == 0
    assert "pulls: adobe-journal" in capsys.readouterr().out
    (tmp_path / "secret").unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read the pull client secret" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "start",
    ["-PT2H", "-PT30M", "-PT1.5S", "-P1D", "-P1DT30M", "-P2W", "PT2H", "2h", "30d",
     "2026-11-01", "2026-11-01T08:00:00Z"],
)  # fmt: skip
def test_every_time_of_the_one_grammar_is_a_start(tmp_path: Path, start: str) -> None:
    (pull,) = load_config(write(tmp_path, BASE + f'start = "{start}"\n')).pulls
    assert pull.start == start
