"""The http sink's ``format`` key: decoded, checked (errors name the key), and what the
drain reads for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.config import load_config

HTTP = "[[sinks]]\nname = 'fwd'\nkind = 'http'\n[sinks.http]\nurl = 'http://x/events'\n"
ACTIVITIES = "[[sinks.filters]]\nstreams = ['activity']\n"


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "streamd.toml"
    path.write_text(text)
    return load_config(str(path), data_dir=str(tmp_path / "data"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HTTP + "format = 'legacy-push'\n",
            'key sinks[0].http.format: "legacy-push" carries lead activities only, and a sink '
            'without filters takes every stream: add [[sinks.filters]] streams = ["activity"]',
        ),
        (
            HTTP + "format = 'legacy-push'\n" + ACTIVITIES
            + "[[sinks.filters]]\nstreams = ['activity', 'audit']\n",
            'key sinks[0].filters[1]: the sink\'s format "legacy-push" carries lead activities '
            'only, and this filter can select other streams: add streams = ["activity"]',
        ),
        (
            HTTP + "format = 'legacy-push'\n[[sinks.filters]]\nmunchkin_ids = ['123-ABC-456']\n",
            "key sinks[0].filters[0]: the sink's format \"legacy-push\"",
        ),
        (
            HTTP + "format = 'legacy-push'\n[[sinks.filters]]\ntypes = ['com.adobe.*']\n",
            "key sinks[0].filters[0]: the sink's format \"legacy-push\"",
        ),
        (
            HTTP + "format = 'streamd'\nrecipient_client_id = 'abc'\n",
            'key sinks[0].http.recipient_client_id: only for format = "cloudevents" or '
            "\"cloudevents-single\" (this sink's format is 'streamd')",
        ),
        (HTTP + "format = 'marketo'\n", "sinks[0].http.format"),
        (
            HTTP + "adobe_signing_key_file = '/k'\nadobe_key_path = '/prod/keys/pub-key-a.pem'\n",
            'key sinks[0].http.adobe_signing_key_file: Adobe signatures are only for format = '
            '"cloudevents" or "cloudevents-single" (this sink\'s format is \'streamd\')',
        ),
        (
            HTTP + "format = 'cloudevents'\nadobe_signing_key_file = '/k'\n",
            "key sinks[0].http.adobe_key_path: needed with adobe_signing_key_file",
        ),
        (
            HTTP + "format = 'cloudevents'\nadobe_signing_key_file = '/k'\n"
            "adobe_key_path = '/keys/a.pem'\n",
            "key sinks[0].http.adobe_key_path: '/keys/a.pem' is not an Adobe key path",
        ),
    ],
)  # fmt: skip
def test_format_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "fmt", "full", "envelopes"),
    [
        (HTTP, "streamd", False, True),
        (HTTP + "format = 'cloudevents'\nrecipient_client_id = 'c'\n", "cloudevents", True, False),
        (HTTP + "format = 'cloudevents-single'\n", "cloudevents-single", True, False),
        (HTTP + "format = 'legacy-push'\n" + ACTIVITIES, "legacy-push", True, False),
        (
            HTTP + "format = 'legacy-push'\n[[sinks.filters]]\n"
            "types = ['com.adobe.platform.marketo.activity.*']\n",
            "legacy-push", True, False,
        ),
    ],
)  # fmt: skip
def test_accepted_formats_and_what_the_drain_reads(
    tmp_path: Path, text: str, fmt: str, full: bool, envelopes: bool
) -> None:
    from streamd.service.config import Config
    from streamd.service.sinks import build_specs

    config = load(tmp_path, text)
    assert isinstance(config, Config)
    assert config.sinks[0].http is not None and config.sinks[0].http.format == fmt
    [spec] = build_specs(config)
    # A converting sink needs each event's JSON and columns; the envelope suffices for streamd.
    assert (spec.full_events, spec.envelopes) == (full, envelopes)


def test_the_signing_key_is_read_and_checked(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from streamd.service.config import Config
    from streamd.service.sinks import build_specs

    def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    path = tmp_path / "forward-key.pem"
    text = (
        HTTP + f"format = 'cloudevents'\nadobe_signing_key_file = '{path}'\n"
        "adobe_key_path = '/prod/keys/pub-key-forward.pem'\n"
    )
    path.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    config = load(tmp_path, text)
    assert isinstance(config, Config)
    with pytest.raises(ConfigError, match="http.adobe_signing_key_file .*: Adobe signatures "
                       "need an RSA key"):  # fmt: skip
        build_specs(config)
    path.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        build_specs(config)
    path.write_bytes(pem(rsa.generate_private_key(65537, 2048)))
    [spec] = build_specs(config)
    assert spec.open_sink().settings.adobe_key is not None  # type: ignore[attr-defined]
