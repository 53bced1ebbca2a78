"""Configuration: defaults, overrides, and errors that name file, key and problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import Config, load_config, parse_listen


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "streamd.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def test_zero_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = load_config(None)
    assert config.data_dir == "./streamd-data"
    assert config.server.listen == ["127.0.0.1:8080"]
    assert config.server.max_body_bytes == 8 * 1024 * 1024
    assert config.journal.synchronous == "full"
    assert config.journal.commit_budget == 5.0
    assert [(s.name, s.path) for s in config.sources] == [("events", "/events")]
    assert config.token_files(config.sources[0]) == ["./streamd-data/api-token"]


def test_state_directory_is_the_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/streamd:/var/lib/other")
    assert load_config(None).data_dir == "/var/lib/streamd"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'data_dir = "/srv/a"\n[server]\nlisten = ["0.0.0.0:9000"]\n[tokens]\nfiles = ["/x"]\n',
    )
    config = load_config(path, listen=["127.0.0.1:0"], data_dir="/srv/b", token_file="/t")
    assert config.data_dir == "/srv/b"
    assert config.server.listen == ["127.0.0.1:0"]
    assert config.tokens.files == ["/t"]


def test_a_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "/srv/streamd"
[server]
listen = ["127.0.0.1:8080", "[::1]:8080"]
max_body_bytes = 1048576
max_in_flight = 64
graceful_timeout = 20.0
[journal]
synchronous = "normal"
commit_budget = 2.5
max_events_per_commit = 5000
[tokens]
files = ["/etc/streamd/tokens"]
[[sources]]
name = "legacy"
path = "/marketo/legacy"
query_token = true
token_files = ["/etc/streamd/legacy-token"]
[[sources]]
name = "io"
path = "/adobe/io"
query_token = false
""",
    )
    config = load_config(path)
    assert config.journal.synchronous == "normal"
    assert config.server.listen[1] == "[::1]:8080"
    legacy, io = config.sources
    assert config.token_files(legacy) == ["/etc/streamd/legacy-token"]
    assert config.token_files(io) == ["/etc/streamd/tokens"]
    assert io.query_token is False


_SIGNED = "[[sources]]\nname='s'\npath='/s'\nauth = 'adobe-signature'\n"
_ADOBE = _SIGNED + "[sources.adobe]\nclient_id = 'c'\n"
ADOBE_ERRORS = [
    (_SIGNED, 'key sources[0].adobe: auth = "adobe-signature" needs an [sources.adobe] table'),
    (
        "[[sources]]\nname='s'\npath='/s'\n[sources.adobe]\nclient_id = 'c'",
        "key sources[0].adobe: only for auth =",
    ),
    (
        _SIGNED + "[sources.adobe]\nclient_id = ' '",
        "key sources[0].adobe.client_id: must not be empty",
    ),
    (
        _ADOBE + "key_host = 'file:///etc'",
        "key sources[0].adobe.key_host: 'file:///etc' is not an http(s)://host[:port] URL",
    ),
    (
        _ADOBE + "pinned_keys = { '/etc/passwd' = 'x' }",
        "key sources[0].adobe.pinned_keys: '/etc/passwd' is not an Adobe key path",
    ),
    (_ADOBE + "fetch_keys = false", "key sources[0].adobe: fetch_keys = false needs pinned_keys"),
    (
        _ADOBE + "key_cache_hours = 48",
        "key sources[0].adobe.key_cache_hours: expected `float` <= 24",
    ),
    (
        "[[sources]]\nname='s'\npath='/s'\nauth = 'jwt'",
        "key sources[0].auth: invalid enum value 'jwt'",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nmax_body_bytes = 'x'", "key server.max_body_bytes: expected `int`, got `str`"),
        ("[server]\nmax_body_bytes = 10", "key server.max_body_bytes: expected `int` >= 1024"),
        ("[server]\nbogus = 1", "key server: object contains unknown field `bogus`"),
        ("[server]\nworkers = -1", "key server.workers: expected `int` >= 0"),
        ("[server]\nworkers = 17", "key server.workers: expected `int` <= 16"),
        ("[server]\nworkers = 1.5", "key server.workers: expected `int`, got `float`"),
        ("nonsense = 1", "key (top level): object contains unknown field `nonsense`"),
        ("[journal]\nsynchronous = 'off'", "key journal.synchronous: invalid enum value 'off'"),
        ("[journal]\ncommit_budget = -1.0", "key journal.commit_budget: expected `float` > 0"),
        ("[[sources]]\nname = 'a'", "key sources[0]: object missing required field `path`"),
        ("[[sources]]\nname = 'a'\npath = 'nope'", "key sources[0].path: 'nope' is not a valid"),
        ("[[sources]]\nname = 'a b'\npath = '/a'", "key sources[0].name: 'a b' is not a valid"),
        (
            "[[sources]]\nname='a'\npath='/a'\n[[sources]]\nname='b'\npath='/a/'",
            "key sources[1].path: duplicate source path",
        ),
        (
            "[[sources]]\nname='a'\npath='/a'\n[[sources]]\nname='a'\npath='/b'",
            "key sources[1].name: duplicate source name 'a'",
        ),
        ("sources = []", "key sources: at least one source"),
        *ADOBE_ERRORS,
        ("[server]\nlisten = []", "key server.listen: at least one address"),
        ("[server]\nlisten = ['localhost']", "key server.listen[0]: 'localhost' is not HOST:PORT"),
        ("[server]\nlisten = ['a:99999']", "port must be a number from 0 to 65535"),
        ("[[sinks]]\nname = 'a'\nkind = 'ftp'", "key sinks[0].kind: invalid enum value 'ftp'"),
        ("[[sinks]]\nname = 'a'\nkind = 'http'", "key sinks[0].http: a http sink needs"),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[sinks.file]\ndirectory = 'x'",
            "key sinks[0].file: only for kind = 'file'",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'http'\n[sinks.http]\nurl = 'ftp://x'",
            "key sinks[0].http.url: 'ftp://x' is not an http",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[[sinks]]\nname = 'a'\nkind = 'stdout'",
            "key sinks[1].name: duplicate sink name 'a'",
        ),
        ("[[sinks]]\nname = '../x'\nkind = 'stdout'", "key sinks[0].name: '../x' is not"),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[sinks.pool]\nworkers = 0",
            "key sinks[0].pool.workers: expected `int` >= 1",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[sinks.pool]\nworkers = 100000",
            "key sinks[0].pool.workers: expected `int` <= 64",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[sinks.pool]\nbatch_size = 600\n"
            "max_in_flight = 500",
            "key sinks[0].pool.batch_size: 600 is larger than pool.max_in_flight (500)",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\npreset = 'marketo'\n[sinks.pool]\n"
            "batch_size = 1000",
            "key sinks[0].pool.batch_size: 1000 is larger than pool.max_in_flight (500)",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[sinks.retry]\nbackoff_base = 10.0\n"
            "backoff_cap = 1.0",
            "key sinks[0].retry.backoff_base: 10 is larger than retry.backoff_cap (1)",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[[sinks.filters]]",
            "key sinks[0].filters[0]: an empty filter matches everything",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'stdout'\n[[sinks.filters]]\nstreams = ['x']",
            "key sinks[0].filters[0].streams[0]: invalid enum value 'x'",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'sqlite'\n[sinks.sqlite]\npath = 'a.db'\n"
            "table_prefix = 'x; drop'",
            "key sinks[0].sqlite.table_prefix: expected `str` matching",
        ),
        (
            "[[sinks]]\nname = 'a'\nkind = 'exec'\n[sinks.exec]\ncommand = []",
            "key sinks[0].exec.command: expected `array` of length >= 1",
        ),
        (
            "[[sinks]]\nname='a'\nkind='http'\n[sinks.http]\nurl='http://x/'\n"
            "headers = {'Bad Name' = 'v'}",
            "key sinks[0].http.headers: 'Bad Name' is not a header name",
        ),
        (
            "[[sinks]]\nname='a'\nkind='http'\n[sinks.http]\nurl='http://x/'\n"
            "headers = {'Webhook-Signature' = 'v1,forged'}",
            "key sinks[0].http.headers: 'Webhook-Signature' is not a header name",
        ),
        (
            "[[sinks]]\nname='a'\nkind='http'\n[sinks.http]\nurl='http://x/'\n"
            "headers = {'X-A' = \"v\\r\\nX-Injected: 1\"}",
            "key sinks[0].http.headers.X-A: a value cannot hold line breaks",
        ),
        (
            "[[sinks]]\nname='a'\nkind='exec'\n[sinks.exec]\ncommand = ['']",
            "key sinks[0].exec.command[0]: must not be empty",
        ),
        ("x = ", "not valid TOML"),
        ("[server", "not valid TOML"),
        (b"\xff\xfe\x00", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str | bytes, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(path + ": ")
    assert message in str(info.value)


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration: No such file"):
        load_config(str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(write(tmp_path, "#" * (1024 * 1024 + 10)))
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(str(tmp_path))


def test_bad_listen_flag_is_named_as_the_flag() -> None:
    with pytest.raises(ConfigError, match="--listen: 'nohost' is not HOST:PORT"):
        load_config(None, listen=["nohost"])


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("h:1", ("h", 1))],
)
def test_parse_listen(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen(address) == expected


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.data_dir = "x"  # type: ignore[misc]


def test_sinks_with_a_preset_and_overrides(tmp_path: Path) -> None:
    from streamd.service.sinks import build_specs, resolve

    secret = tmp_path / "secret"
    secret.write_text(
        "# rotation: both sign\nwhsec_"
        + "a2V5" * 8
        + "\nwhsec_"
        + "b3RoZXItc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY="
        + "\n"
    )
    path = write(
        tmp_path,
        f"""
[[sinks]]
name = "legacy"
kind = "http"
preset = "marketo"
[sinks.http]
url = "https://example.com/hook"
secret_files = ["{secret}"]
[sinks.retry]
probe_interval = 60.0
[[sinks]]
name = "files"
kind = "file"
[sinks.file]
directory = "out"
[[sinks.filters]]
types = ["com.adobe.*"]
streams = ["activity"]
""",
    )
    config = load_config(path, data_dir=str(tmp_path / "data"))
    pool, retry = resolve(config.sinks[0])
    assert (pool.workers, pool.batch_size, pool.linger, pool.timeout) == (1, 500, 2.0, 20.0)
    assert (retry.backoff_base, retry.pause_after, retry.max_attempts) == (180.0, 4, 0)
    assert retry.probe_interval == 60.0  # the override wins over the preset
    legacy, files = build_specs(config)
    assert legacy.timeout == 20.0 and files.workers == 4
    assert files.route.filters[0].types == ("com.adobe.*",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the signing secret: No such file"),
        ("", "holds no signing secret"),
        ("sk_live_123", "must look like whsec_"),
        ("whsec_%%%", "not valid base64"),
        (b"\xff\xfe", "not UTF-8"),
        ("x" * 70_000, "larger than"),
    ],
)
def test_bad_secret_files_are_named(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    from streamd.service.sinks import build_specs

    secret = tmp_path / "secret"
    if content is not None:
        secret.write_bytes(content.encode() if isinstance(content, str) else content)
    path = write(
        tmp_path,
        f'[[sinks]]\nname="h"\nkind="http"\n[sinks.http]\nurl="http://x/"\n'
        f'secret_files=["{secret}"]\n',
    )
    with pytest.raises(ConfigError, match=message) as info:
        build_specs(load_config(path))
    assert str(secret) in str(info.value)


# Every key that takes addresses, with a TOML table that makes it valid, and two addresses
# that do not overlap (listeners must not).
_ADDRESS_CASES = {
    "server.listen": ("[server]\nlisten = {v}\n", ("127.0.0.1:18080", "127.0.0.1:18082")),
    "server.mtls_listen": (
        '[server]\ntls_certfile = "c.pem"\ntls_keyfile = "k.pem"\nmtls_client_ca = "ca.pem"\n'
        "mtls_listen = {v}\n",
        ("127.0.0.1:18443", "127.0.0.1:18444"),
    ),
    "admin.listen": ("[admin]\nlisten = {v}\n", ("127.0.0.1:18081", "127.0.0.1:18083")),
    "sources[].validation_hosts": (
        '[[sources]]\nname = "a"\npath = "/a"\nvalidation_hosts = {v}\n',
        ("csm.adobe.io", "csm.example.com:8443"),
    ),
}


def _address_value(config: Config, key: str) -> list[str]:
    table, _, name = key.partition(".")
    if table == "sources[]":
        return list(getattr(config.sources[0], name))
    return list(getattr(getattr(config, table), name))


def test_every_address_key_is_covered() -> None:
    from streamd.service.config import ADDRESS_KEYS
    from tests.unit.test_docs import config_keys

    looks_like_addresses = [k for k in config_keys() if k.endswith(("listen", "_hosts"))]
    assert sorted(looks_like_addresses) == sorted(ADDRESS_KEYS) == sorted(_ADDRESS_CASES)


@pytest.mark.parametrize("key", sorted(_ADDRESS_CASES))
def test_address_keys_take_a_string_or_a_list_alike(tmp_path: Path, key: str) -> None:
    template, (first, second) = _ADDRESS_CASES[key]
    one = load_config(write(tmp_path, template.format(v=f'"{first}"')))
    assert _address_value(one, key) == [first]
    listed = load_config(write(tmp_path, template.format(v=f'["{first}"]')))
    assert _address_value(listed, key) == [first]
    assert one == listed
    both = load_config(write(tmp_path, template.format(v=f'["{first}", "{second}"]')))
    assert _address_value(both, key) == [first, second]


@pytest.mark.parametrize(
    ("key", "written", "message"),
    [
        ("server.listen", '"nohost"', "key server.listen: 'nohost' is not HOST:PORT"),
        ("server.listen", '["nohost"]', "key server.listen[0]: 'nohost' is not HOST:PORT"),
        ("server.mtls_listen", '"a:b"', "key server.mtls_listen: 'a:b': port must be"),
        ("server.mtls_listen", '["127.0.0.1:1", "a:b"]', "key server.mtls_listen[1]: 'a:b'"),
        ("admin.listen", '"x"', "key admin.listen: 'x' is not HOST:PORT"),
        ("server.listen", "8080", "key server.listen: expected `array`, got `int`"),
        ("sources[].validation_hosts", "1", "key sources[0].validation_hosts: expected `array`"),
    ],
)
def test_a_bad_address_is_named_as_written(
    tmp_path: Path, key: str, written: str, message: str
) -> None:
    template, _ = _ADDRESS_CASES[key]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, template.format(v=written)))
