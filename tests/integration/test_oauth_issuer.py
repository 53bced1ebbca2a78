"""The embedded OAuth issuer: POST /oauth/token, then Bearer tokens on an oauth source."""

from __future__ import annotations

import base64
import subprocess
import sys

import httpx
import pytest

from streamd.auth.issuer import Issuer, check_secret, hash_secret
from tests.conftest import fixture_bytes

from .conftest import Server, StartServer

SECRET = "marketo-client-secret-0123456789"
HASH = hash_secret(SECRET, iterations=10_000)  # fewer rounds: tests hash on every request


def oauth_toml(extra: str = "") -> str:
    return (
        f'[oauth]\ntoken_ttl = 120\n{extra}[oauth.clients]\nmarketo = "{HASH}"\n'
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
        '[[sources]]\nname = "events"\npath = "/events"\n'
    )


async def get_token(server: Server, **form: str) -> httpx.Response:
    body = {"grant_type": "client_credentials", **form}
    return await server.client.post(server.url + "/oauth/token", data=body)


@pytest.fixture
async def issuer_server(start_server: StartServer) -> Server:
    server: Server = await start_server(oauth_toml())
    return server


async def test_a_token_from_the_issuer_opens_the_oauth_source(issuer_server: Server) -> None:
    reply = await get_token(issuer_server, client_id="marketo", client_secret=SECRET)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 120
    token = answer["access_token"]
    assert token.startswith("sdo.")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ok = await issuer_server.client.post(
        issuer_server.url + "/legacy", content=fixture_bytes("legacy_push"), headers=headers
    )
    assert ok.json() == {"accepted": 4, "duplicates": 0}
    # The OAuth token is not an API token, and an API token does not open the oauth source.
    other = await issuer_server.client.post(
        issuer_server.url + "/events", content=fixture_bytes("lads_single"), headers=headers
    )
    assert other.status_code == 401
    api = await issuer_server.post(fixture_bytes("lads_single"), path="/legacy")
    assert api.status_code == 401


async def test_basic_auth_also_works(issuer_server: Server) -> None:
    basic = base64.b64encode(f"marketo:{SECRET}".encode()).decode()
    reply = await issuer_server.client.post(
        issuer_server.url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "marketo", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "nobody", "client_secret": SECRET}, 401, "invalid_client"),
        ({"client_id": "marketo"}, 401, "invalid_client"),
        (
            {"grant_type": "password", "client_id": "marketo", "client_secret": SECRET},
            400,
            "unsupported_grant_type",
        ),
    ],
)
async def test_refusals(
    issuer_server: Server, form: dict[str, str], status: int, error: str
) -> None:
    body = {"grant_type": "client_credentials", **form}
    reply = await issuer_server.client.post(issuer_server.url + "/oauth/token", data=body)
    assert (reply.status_code, reply.json()["error"]) == (status, error)
    assert SECRET not in reply.text


async def test_malformed_token_requests(issuer_server: Server) -> None:
    url = issuer_server.url + "/oauth/token"
    as_json = await issuer_server.client.post(url, json={"grant_type": "client_credentials"})
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    big = await issuer_server.client.post(
        url,
        content=b"grant_type=client_credentials&x=" + b"a" * 10_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    garbage = await issuer_server.client.post(
        url, content=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert garbage.status_code == 400
    assert (await issuer_server.client.get(url)).status_code == 405


async def test_brute_force_is_slowed(issuer_server: Server) -> None:
    for _ in range(5):
        reply = await get_token(issuer_server, client_id="marketo", client_secret="guess")
        assert reply.status_code == 401
    blocked = await get_token(issuer_server, client_id="marketo", client_secret=SECRET)
    assert blocked.status_code == 429  # even the right secret, until the window passes
    assert blocked.json()["error"] == "slow_down"
    assert int(blocked.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: (
            "sdo."
            + base64.urlsafe_b64encode(b'{"sub":"marketo","exp":9999999999}').decode().rstrip("=")
            + "."
            + t.rsplit(".", 1)[1]
        ),  # claims swapped under the old signature
        lambda t: "sdo.not-a-token",
        lambda t: "x" * 2000,
    ],
)
async def test_tampered_tokens_are_refused(issuer_server: Server, tamper: object) -> None:
    token = (await get_token(issuer_server, client_id="marketo", client_secret=SECRET)).json()[
        "access_token"
    ]
    bad = tamper(token)  # type: ignore[operator]
    reply = await issuer_server.client.post(
        issuer_server.url + "/legacy",
        content=fixture_bytes("legacy_push"),
        headers={"Authorization": f"Bearer {bad}"},
    )
    assert reply.status_code == 401


def test_tokens_expire_and_die_with_their_client() -> None:
    now = [1_000_000.0]
    issuer = Issuer({"marketo": HASH}, b"k" * 32, ttl=60, clock=lambda: now[0])
    token, ttl = issuer.issue("marketo")
    assert ttl == 60
    assert issuer.check(token.encode()) == "marketo"
    now[0] += 59
    assert issuer.check(token.encode()) == "marketo"
    now[0] += 1
    assert issuer.check(token.encode()) is None  # expired
    fresh, _ = issuer.issue("marketo")
    gone = Issuer({}, b"k" * 32, ttl=60, clock=lambda: now[0])
    assert gone.check(fresh.encode()) is None  # the client was removed from the config
    other_key = Issuer({"marketo": HASH}, b"j" * 32, ttl=60, clock=lambda: now[0])
    assert other_key.check(fresh.encode()) is None


def test_secret_hashes() -> None:
    stored = hash_secret("s" * 20, iterations=10_000)
    assert check_secret("s" * 20, stored)
    assert not check_secret("s" * 19, stored)
    assert not check_secret("s" * 20, "nonsense")
    assert stored != hash_secret("s" * 20, iterations=10_000)  # salted


def test_hash_secret_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "oauth", "hash-secret"],
        input="a-long-enough-client-secret\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert check_secret("a-long-enough-client-secret", done.stdout.strip())
    short = subprocess.run(
        [sys.executable, "-m", "streamd", "oauth", "hash-secret"],
        input="short\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert short.returncode == 2 and "at least 16 characters" in short.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[sources]]\nname = "l"\npath = "/l"\nauth = "oauth"\n',
            'key sources[0].auth: "oauth" needs [oauth] clients',
        ),
        ('[oauth.clients]\nmarketo = "plain-secret"\n', "key oauth.clients.marketo: not a secret"),
        ('[oauth.clients]\n"bad id" = "x"\n', "key oauth.clients: 'bad id' is not a valid"),
    ],
)
def test_config_errors(
    tmp_path: object, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    from pathlib import Path

    from streamd.cli import main

    path = Path(str(tmp_path)) / "streamd.toml"
    path.write_text(toml)
    assert main(["check-config", "--config", str(path), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
