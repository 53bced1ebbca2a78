"""``streamd check-config`` and ``streamd serve`` give the same verdict on the same file.

Issue 13, cases 7 and 9: ``check-config`` said ok where ``serve`` then refused to start
(an introspection source whose secret file was missing; a listener on the admin
listener's port, spelt ``localhost``, which ``serve`` met as a 46-line traceback from
``listen()``). Each broken configuration below is run through both real commands: both
refuse it, each with one line naming the problem and no traceback; the working one is
accepted by both.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from ._harness import Processes, free_port, streamd_argv, wait_for

Case = Callable[[Path], str]  # writes what it needs under the directory; returns TOML


def _tls(tmp: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"


def _secret(tmp: Path, name: str = "secret") -> Path:
    path = tmp / name
    path.write_text("s3cret-0123456789abcdef\n")
    return path


def admin_spelt_localhost(tmp: Path) -> str:
    port = free_port()
    return f'[server]\nlisten = ["127.0.0.1:{port}"]\n[admin]\nlisten = "localhost:{port}"\n'


def wildcard_then_loopback(tmp: Path) -> str:
    port = free_port()
    return f'[server]\nlisten = ["0.0.0.0:{port}"]\n[admin]\nlisten = "127.0.0.1:{port}"\n'


def mtls_on_the_ingest_port(tmp: Path) -> str:
    cert, key, ca = _tls(tmp)
    port = free_port()
    return (
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nmtls_listen = ["[::]:{port}"]\n'
        f'tls_certfile = "{cert}"\ntls_keyfile = "{key}"\nmtls_client_ca = "{ca}"\n'
    )


def introspection_secret_missing(tmp: Path) -> str:
    return (
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
        '[sources.oauth]\nmode = "introspection"\n'
        'introspection_url = "https://idp.example/introspect"\n'
        f'client_id = "streamd"\nclient_secret_file = "{tmp / "nope"}"\n'
    )


def pinned_key_missing(tmp: Path) -> str:
    return (
        '[[sources]]\nname = "io"\npath = "/io"\nauth = "adobe-signature"\n'
        '[sources.adobe]\nclient_id = "c"\nfetch_keys = false\n'
        f'pinned_keys = {{ "/prod/keys/pub-key-a.pem" = "{tmp / "nope.pem"}" }}\n'
    )


def tls_certificate_missing(tmp: Path) -> str:
    return (
        f'[server]\nlisten = ["127.0.0.1:0"]\ntls_certfile = "{tmp / "nope.pem"}"\n'
        f'tls_keyfile = "{tmp / "nope.key"}"\n'
    )


def sink_token_missing(tmp: Path) -> str:
    return (
        '[[sinks]]\nname = "hook"\nkind = "http"\n[sinks.http]\n'
        f'url = "https://hook.example/in"\nbearer_token_file = "{tmp / "nope"}"\n'
    )


def pull_secret_missing(tmp: Path) -> str:
    return (
        '[[pulls]]\nname = "journal"\nurl = "https://events.example/journal"\n'
        'org_id = "o"\nclient_id = "c"\nscope = "s"\n'
        f'client_secret_file = "{tmp / "nope"}"\n'
    )


def source_token_file_missing(tmp: Path) -> str:
    return f'[[sources]]\nname = "a"\npath = "/a"\ntoken_files = ["{tmp / "nope"}"]\n'


def validation_ca_missing(tmp: Path) -> str:
    return (
        '[[sources]]\nname = "io"\npath = "/io"\nauto_validate = true\n'
        f'validation_ca_file = "{tmp / "nope.pem"}"\n'
    )


def signing_key_too_short(tmp: Path) -> str:
    key = tmp / "signing-key"
    key.write_bytes(b"short")
    from streamd.auth.issuer import hash_secret

    return (
        f'[oauth]\nsigning_key_file = "{key}"\n'
        f'clients = {{ marketo = "{hash_secret("a-client-secret-of-20")}" }}\n'
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\n'
    )


def address_not_on_this_machine(tmp: Path) -> str:
    return '[server]\nlisten = ["192.0.2.1:0"]\n'  # TEST-NET-1: never local


def host_that_does_not_resolve(tmp: Path) -> str:
    return '[server]\nlisten = ["no-such-host.invalid:0"]\n'


def shares_over_the_total(tmp: Path) -> str:
    return (
        "[server]\nmax_in_flight = 10\n"
        '[[sources]]\nname = "a"\npath = "/a"\nmax_in_flight = 8\n'
        '[[sources]]\nname = "b"\npath = "/b"\nmax_in_flight = 8\n'
    )


def events_past_the_queue(tmp: Path) -> str:
    return "[server]\nmax_events_per_request = 5000\n[journal]\nmax_queued_events = 1000\n"


def data_dir_under_a_file(tmp: Path) -> str:
    (tmp / "a-file").write_text("")
    return f'data_dir = "{tmp / "a-file" / "data"}"\n'


BROKEN: list[Case] = [
    admin_spelt_localhost,
    wildcard_then_loopback,
    mtls_on_the_ingest_port,
    introspection_secret_missing,
    pinned_key_missing,
    tls_certificate_missing,
    sink_token_missing,
    pull_secret_missing,
    source_token_file_missing,
    validation_ca_missing,
    signing_key_too_short,
    address_not_on_this_machine,
    host_that_does_not_resolve,
    shares_over_the_total,
    events_past_the_queue,
    data_dir_under_a_file,
]


def everything_set_up(tmp: Path) -> str:
    """A working configuration that uses each of the features above."""
    cert, key, ca = _tls(tmp)
    from streamd.auth.issuer import hash_secret

    return (
        f'[server]\nlisten = ["127.0.0.1:0"]\nmtls_listen = ["127.0.0.1:0"]\n'
        f'tls_certfile = "{cert}"\ntls_keyfile = "{key}"\nmtls_client_ca = "{ca}"\n'
        "max_in_flight = 10\n"
        '[admin]\nlisten = "127.0.0.1:0"\n'
        f'[oauth]\nclients = {{ marketo = "{hash_secret("a-client-secret-of-20")}" }}\n'
        '[[sources]]\nname = "legacy"\npath = "/legacy"\nauth = "oauth"\nmax_in_flight = 3\n'
        '[sources.oauth]\nmode = "introspection"\n'
        'introspection_url = "https://idp.example/introspect"\n'
        f'client_id = "streamd"\nclient_secret_file = "{_secret(tmp)}"\n'
        '[[sources]]\nname = "io"\npath = "/io"\nauto_validate = true\n'
        f'validation_ca_file = "{ca}"\n'
        '[[sinks]]\nname = "hook"\nkind = "http"\n[sinks.http]\n'
        f'url = "https://hook.example/in"\nbearer_token_file = "{_secret(tmp, "hook")}"\n'
        '[[pulls]]\nname = "journal"\nurl = "https://events.example/journal"\n'
        'org_id = "o"\nclient_id = "c"\nscope = "s"\n'
        f'client_secret_file = "{_secret(tmp, "pull")}"\n'
    )


def verdicts(processes: Processes, tmp: Path, case: Case) -> tuple[int, str, int, str]:
    """(check-config's status, its stderr, serve's status, its stderr): serve's status is
    0 when it became ready (it is then stopped)."""
    config = tmp / "streamd.toml"
    config.write_text(f'data_dir = "{tmp / "data"}"\n' + case(tmp))
    checked = processes.run([*streamd_argv(), "check-config", "--config", str(config)])
    serving = processes.spawn([*streamd_argv(), "serve", "--config", str(config)], "serve")

    def decided() -> bool:
        return "streamd ready: " in serving.stdout() or not serving.alive()

    wait_for(decided, timeout=30, what="serve to become ready or exit")
    if serving.alive():
        serving.send_signal(15)
        serving.wait(30)
        return checked.returncode, checked.stderr, 0, serving.stderr()
    return checked.returncode, checked.stderr, serving.popen.returncode, serving.stderr()


@pytest.mark.parametrize("case", BROKEN, ids=[c.__name__ for c in BROKEN])
def test_check_config_refuses_what_serve_refuses(
    processes: Processes, tmp_path: Path, case: Case
) -> None:
    checked, check_err, served, serve_err = verdicts(processes, tmp_path, case)
    assert (checked, served) == (2, 2), (check_err, serve_err)
    for err in (check_err, serve_err):
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("streamd:")]
        assert len(lines) == 1 and lines[0].startswith("streamd: configuration error: "), err


def test_check_config_and_serve_accept_a_working_configuration(
    processes: Processes, tmp_path: Path
) -> None:
    checked, check_err, served, serve_err = verdicts(processes, tmp_path, everything_set_up)
    assert (checked, served) == (0, 0), (check_err, serve_err)
    assert not (tmp_path / "data" / "api-token").exists() or served == 0


def test_a_port_taken_by_another_process_is_only_found_by_serve(
    processes: Processes, tmp_path: Path
) -> None:
    # The documented exception: check-config validates a file for a daemon that may be
    # running on these very ports, so it does not try to take them.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        checked, _, served, serve_err = verdicts(
            processes, tmp_path, lambda tmp: f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
        )
    assert (checked, served) == (0, 2)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in serve_err
