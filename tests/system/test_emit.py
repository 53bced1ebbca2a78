"""``streamd emit`` (a real process) against ``streamd serve`` (a real process), then
``streamd emit verify``: in every mode, and with the server SIGKILLed mid-run."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from ._harness import (
    Processes,
    Server,
    Spawned,
    assert_no_traceback,
    free_port,
    serve,
    stop_gracefully,
    streamd_argv,
    wait_for,
)

CLIENT_SECRET = "idp-secret-0123456789"
RECIPIENT = "streamd-emit-test-client"


def _emit(processes: Processes, name: str, *args: str) -> Spawned:
    return processes.spawn([*streamd_argv(), "emit", *args], name)


def _verify(processes: Processes, server: Server, acked: Path) -> str:
    done = processes.run(
        [*streamd_argv(), "emit", "verify", "--journal", str(server.journal), "--acked", str(acked)]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_traceback(done.stderr)
    return done.stdout


def _acked_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture
def token_endpoint(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, str]], list[str]]]:
    """A tiny OAuth token endpoint on loopback: hands out the token it is given."""
    issued: list[str] = []
    requests: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            requests.append(form)
            ok = form.get("client_secret") == CLIENT_SECRET and issued
            body = json.dumps({"access_token": issued[0], "expires_in": 3600} if ok else {})
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/oauth/token", requests, issued
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


MODES = {
    # legacy cadence (a batch every 2 s of 100-500) at time scale 50: 40 ms apart
    "legacy-token": [
        "--count", "3000", "--parallel", "3", "--time-scale", "50", "--duplicates", "0.3",
    ],
    "legacy-oauth": ["--count", "1500", "--parallel", "2", "--unpaced"],
    "io-mixed-signed": [
        "--mode", "io", "--shape", "mixed", "--count", "1200", "--parallel", "2",
        "--inflight", "2", "--unpaced", "--duplicates", "0.2",
    ],
    "io-single": ["--mode", "io", "--batch", "1", "--single", "--count", "60", "--rate", "300"],
}  # fmt: skip


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_passes_verify(
    tmp_path: Path,
    processes: Processes,
    token_endpoint: tuple[str, list[dict[str, str]], list[str]],
    mode: str,
) -> None:
    key_port = free_port()
    config = tmp_path / "streamd.toml"
    # I/O deliveries go to a signed source: streamd fetches the emulator's public keys
    # from its key server and verifies every request, as it would Adobe's.
    config.write_text(
        '[[sources]]\nname = "events"\npath = "/events"\n'
        '[[sources]]\nname = "io"\npath = "/io"\nauth = "adobe-signature"\n'
        f'[sources.adobe]\nclient_id = "{RECIPIENT}"\n'
        f'key_host = "http://127.0.0.1:{key_port}"\n'
    )
    server = serve(processes, tmp_path / "data", args=["--config", str(config)])
    token = server.token()
    url = f"http://127.0.0.1:{server.port}/events"
    acked = tmp_path / "acked"
    args = [*MODES[mode], "--acked", str(acked), "--json"]
    if mode == "legacy-token":
        args += ["--token-file", str(server.data_dir / "api-token")]
    elif mode == "legacy-oauth":
        idp_url, _, issued = token_endpoint
        issued.append(token)
        secret = tmp_path / "secret"
        secret.write_text(CLIENT_SECRET + "\n")
        args += [
            "--oauth-url",
            idp_url,
            "--client-id",
            "marketo",
            "--client-secret-file",
            str(secret),
        ]
    else:
        url = f"http://127.0.0.1:{server.port}/io"  # signatures, no token
        args += ["--key-server", f"127.0.0.1:{key_port}", "--recipient", RECIPIENT]
    emit = _emit(processes, f"emit-{mode}", "--to", url, *args)
    assert emit.wait(60) == 0, emit.stderr()
    summary = json.loads(emit.stdout())
    events = int(MODES[mode][MODES[mode].index("--count") + 1])
    assert summary["events_acked"] == events and summary["events_given_up"] == 0
    assert summary["outcomes"].keys() == {"200"}
    if "--duplicates" in MODES[mode]:
        assert summary["duplicate_events_sent"] == summary["receiver_reported_duplicates"] > 0
    if mode == "legacy-oauth":
        assert summary["token_fetches"] == 1 and token_endpoint[1][0]["client_id"] == "marketo"
    if mode.startswith("io"):
        assert "challenge answered" in emit.stderr()
        assert "fetched Adobe public key /prod/keys/pub-key-" in server.spawned.stderr()
    assert_no_traceback(emit.stderr())
    out = _verify(processes, server, acked)
    assert out.startswith(f"ok: all {events} acknowledged ids")
    stop_gracefully(server)


_LEGACY_KILL = ["--parallel", "3", "--batch", "200", "--rate", "4000", "--time-scale", "600"]
_IO_KILL = ["--mode", "io", "--no-sign", "--parallel", "2", "--inflight", "2", "--rate", "2000",
            "--time-scale", "600"]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "args", "kills"),
    [
        # legacy: a 3-minute retry wait takes 0.3 s at time scale 600
        pytest.param("legacy", [*_LEGACY_KILL, "--count", "8000"], 2, id="legacy-2-kills"),
        # I/O: 1, 2, 4 min waits take 0.1, 0.2, 0.4 s at time scale 600
        pytest.param("io", [*_IO_KILL, "--count", "4000"], 2, id="io-2-kills"),
        pytest.param(
            "legacy", [*_LEGACY_KILL, "--count", "60000"], 12, id="legacy-12-kills",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "io", [*_IO_KILL, "--count", "30000"], 12, id="io-12-kills", marks=pytest.mark.slow
        ),
    ],
)  # fmt: skip
def test_sigkill_and_restart_mid_run_loses_nothing_acknowledged(
    tmp_path: Path, processes: Processes, mode: str, args: list[str], kills: int
) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    server = serve(processes, data_dir, port=port, name="streamd-0")
    url = f"http://127.0.0.1:{port}/events"
    if mode == "io":
        url += f"?access_token={server.token()}"
    else:
        args = [*args, "--token-file", str(data_dir / "api-token")]
    acked = tmp_path / "acked"
    emit = _emit(processes, "emit", "--to", url, *args, "--acked", str(acked), "--json")
    for cycle in range(1, kills + 1):
        # Kill once some events (and more since the last restart) got through.
        floor = _acked_lines(acked) + 400
        wait_for(
            lambda floor=floor: _acked_lines(acked) >= floor,  # type: ignore[misc]
            timeout=30,
            what=f"{floor} acked ids",
        )
        server.spawned.popen.kill()
        assert server.spawned.wait(10) == -signal.SIGKILL
        down_at = _acked_lines(acked)
        time.sleep(0.5)  # the emulator meets a dead port for a while (not a synchronisation)
        assert emit.alive(), emit.stderr()
        server = serve(processes, data_dir, port=port, name=f"streamd-{cycle}")
    assert emit.wait(60) == 0, emit.stderr()
    summary = json.loads(emit.stdout())
    assert summary["events_acked"] == int(args[args.index("--count") + 1])
    assert summary["retries"] > 0 and "connection" in summary["outcomes"], summary
    assert _acked_lines(acked) > down_at
    out = _verify(processes, server, acked)
    assert out.startswith("ok: all")
    stop_gracefully(server)


def test_sigterm_stops_sending_and_prints_the_summary(tmp_path: Path, processes: Processes) -> None:
    server = serve(processes, tmp_path / "data")
    acked = tmp_path / "acked"
    emit = _emit(
        processes,
        "emit",
        "--to",
        f"http://127.0.0.1:{server.port}/events",
        "--token-file",
        str(server.data_dir / "api-token"),
        "--rate",
        "2000",
        "--acked",
        str(acked),
        "--json",
    )
    wait_for(lambda: _acked_lines(acked) >= 500, timeout=30, what="500 acked ids")
    emit.send_signal(signal.SIGTERM)
    assert emit.wait(30) == 0, emit.stderr()
    summary = json.loads(emit.stdout())
    assert summary["events_acked"] == summary["events_sent"] >= 500
    assert summary["events_unresolved"] == 0
    assert "no new batches; finishing retries" in emit.stderr()
    assert _verify(processes, server, acked).startswith(f"ok: all {summary['events_acked']}")
    stop_gracefully(server)


def test_journal_server_process_pages_and_stops_on_sigterm(processes: Processes) -> None:
    server = _emit(
        processes,
        "journal",
        "--journal-server",
        "--listen",
        "127.0.0.1:0",
        "--journal-events",
        "30",
        "--journal-expired",
        "5",
    )
    ready = wait_for(
        lambda: re.search(r"journal ready: (http://\S+)\n", server.stdout()),
        timeout=15,
        what="the journal server's ready line",
        context=server.stderr,
    )
    assert ready is not None
    url = ready.group(1)
    with urllib.request.urlopen(url + "?limit=10", timeout=10) as resp:
        doc = json.loads(resp.read())
        link = resp.headers["link"]
    assert [e["position"] for e in doc["events"]][:1] == ["p000000000005"]
    assert doc["_page"]["count"] == 10 and 'rel="next"' in link
    try:
        urllib.request.urlopen(url + "?since=p000000000001", timeout=10)
        raise AssertionError("an expired position must answer 410")
    except urllib.error.HTTPError as exc:
        assert exc.code == 410
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0, server.stderr()
    assert_no_traceback(server.stderr())


def test_legacy_oauth_against_streamds_own_issuer(tmp_path: Path, processes: Processes) -> None:
    """Marketo's OAuth set-up with streamd as the identity provider: the emulator fetches
    a token from streamd's POST /oauth/token and delivers with it; everything verifies."""
    from streamd.auth.issuer import hash_secret

    secret = tmp_path / "secret"
    secret.write_text("marketo-client-secret-0123456789\n")
    config = tmp_path / "streamd.toml"
    stored = hash_secret(secret.read_text().strip(), iterations=10_000)
    config.write_text(
        f'[oauth.clients]\nmarketo = "{stored}"\n'
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
    )
    server = serve(processes, tmp_path / "data", args=["--config", str(config)])
    base = f"http://127.0.0.1:{server.port}"
    acked = tmp_path / "acked"
    emit = _emit(
        processes,
        "emit-own-issuer",
        *("--to", f"{base}/legacy", "--count", "1500", "--parallel", "2", "--unpaced"),
        *("--oauth-url", f"{base}/oauth/token", "--client-id", "marketo"),
        *("--client-secret-file", str(secret), "--acked", str(acked), "--json"),
    )
    assert emit.wait(60) == 0, emit.stderr()
    summary = json.loads(emit.stdout())
    assert summary["events_acked"] == 1500 and summary["outcomes"].keys() == {"200"}
    assert summary["token_fetches"] == 1
    assert _verify(processes, server, acked).startswith("ok: all 1500 acknowledged ids")
    stop_gracefully(server)
