"""The real ``streamd`` process: first start, signals, exit codes, CLI errors, stats."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from ._harness import (
    GENERATED,
    HeldRequest,
    LoadClient,
    Processes,
    Server,
    assert_no_traceback,
    check_batches_atomic,
    check_journal,
    clean_env,
    fixture_bytes,
    journal_keys,
    legacy_ids,
    post,
    refuses_connections,
    serve,
    stop_gracefully,
    streamd_argv,
    total_acked,
    wait_for,
)

LEGACY = fixture_bytes("legacy_push.json")
GRACE = 3.0  # server.graceful_timeout of the load test

# -- (a) first start: the generated API token ------------------------------------


def test_first_start_generates_a_private_token_and_prints_it_once(
    tmp_path: Path, processes: Processes
) -> None:
    data_dir = tmp_path / "data"
    first = serve(processes, data_dir, name="first")
    token_file = data_dir / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = first.token()
    assert token_file.read_text() == token + "\n"
    printed = GENERATED.findall(first.spawned.stdout())
    assert printed == [(str(token_file), token)], first.spawned.stdout()
    assert token not in first.spawned.stderr(), "the token must not go to the log"
    assert post(first.port, LEGACY, token=token).status == 200
    wrong = post(first.port, LEGACY, token="x" * len(token))
    assert wrong.status == 401
    stop_gracefully(first)

    second = serve(processes, data_dir, name="second")
    assert "generated an API token" not in second.spawned.stdout()
    assert token not in second.spawned.stdout() + second.spawned.stderr()
    assert token_file.read_text() == token + "\n", "the token must survive a restart"
    reply = post(second.port, LEGACY, token=token)
    assert (reply.status, reply.body) == (200, {"accepted": 0, "duplicates": 4})
    stop_gracefully(second)


def test_token_file_flag_creates_that_file(tmp_path: Path, processes: Processes) -> None:
    token_file = tmp_path / "secrets" / "streamd.token"
    server = serve(processes, tmp_path / "data", args=["--token-file", str(token_file)])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert GENERATED.findall(server.spawned.stdout()) == [(str(token_file), token)]
    assert not (tmp_path / "data" / "api-token").exists()
    assert post(server.port, LEGACY, token=token).status == 200
    stop_gracefully(server)


def test_under_systemd_the_generated_token_is_never_printed(
    tmp_path: Path, processes: Processes
) -> None:
    # systemd sets INVOCATION_ID; stdout then goes to the journal, where no secret belongs.
    data_dir = tmp_path / "data"
    argv = [*streamd_argv(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    argv += ["--admin-listen", "127.0.0.1:0"]  # not 8081, which a running streamd may hold
    env = {**clean_env(), "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
    server = Server(processes.spawn(argv, "under-systemd", env=env), data_dir)
    server.wait_ready()
    token = server.token()
    out = server.spawned.stdout() + server.spawned.stderr()
    assert f"streamd: generated an API token; read it in {data_dir / 'api-token'}" in out
    assert token not in out
    stop_gracefully(server)


def test_logs_are_json_lines_off_a_terminal(tmp_path: Path, processes: Processes) -> None:
    server = serve(processes, tmp_path / "data")
    assert post(server.port, LEGACY, token=server.token()).status == 200
    stop_gracefully(server)
    lines = server.spawned.stderr().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"ts", "level", "logger", "msg"} <= set(entries[0])
    assert any(e["msg"] == "SIGTERM: stopping gracefully" for e in entries)
    assert server.token() not in server.spawned.stderr()


# -- (b) a signal while idle; (d) SIGINT behaves like SIGTERM ----------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_exits_zero_quickly(
    tmp_path: Path, processes: Processes, signum: signal.Signals
) -> None:
    server = serve(processes, tmp_path / "data")
    reply = post(server.port, LEGACY, token=server.token())
    assert (reply.status, reply.body) == (200, {"accepted": 4, "duplicates": 0})

    elapsed = stop_gracefully(server, signum)
    assert elapsed < 5, f"graceful stop while idle took {elapsed:.1f} s"
    assert_no_traceback(server.spawned.stderr())
    keys = check_journal(server.journal, legacy_ids(LEGACY))
    assert set(keys) == set(legacy_ids(LEGACY))


# -- (c) a signal during load ------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "workers"])
def test_sigterm_under_load_answers_in_flight_requests_and_exits_zero(
    tmp_path: Path, processes: Processes, workers: int
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"load seed={seed}")
    data_dir = tmp_path / "data"
    # A short grace keeps the test fast when hypercorn parks a connection until the
    # deadline (see test_pipelined_request_during_the_grace_does_not_delay_the_exit).
    config = tmp_path / "streamd.toml"
    config.write_text(f"[server]\ngraceful_timeout = {GRACE}\nworkers = {workers}\n")
    server = serve(processes, data_dir, args=["--config", str(config)])
    clients = [
        LoadClient.start(
            processes,
            port=server.port,
            token_file=data_dir / "api-token",
            seed=seed,
            client=index,
        )
        for index in range(2)
    ]
    wait_for(
        lambda: total_acked(clients) >= 20,
        timeout=20,
        what="20 acknowledged batches",
        context=server.spawned.stderr,
    )

    elapsed = stop_gracefully(server, signal.SIGTERM)
    summaries = [client.stop() for client in clients]
    print(f"stopped in {elapsed:.2f} s; clients: {summaries}")
    assert elapsed < GRACE + 3
    assert_no_traceback(server.spawned.stderr())
    for summary in summaries:
        # Answered requests got 200 or 503; the rest found the server gone.
        assert set(summary["statuses"]) <= {"200", "503"}, summary
        assert summary["violations"] == [], summary
    acked = set().union(*(client.acked_ids() for client in clients))
    keys = check_journal(server.journal, acked)
    sent = [batch for client in clients for batch in client.sent_batches()]
    check_batches_atomic(sent, keys)
    # A graceful stop answers every request it journaled: no committed batch without its 200.
    unanswered = set(keys) - acked
    assert not unanswered, f"{len(unanswered)} ids journaled but never acknowledged"


def _graceful_config(tmp_path: Path, workers: int = 0) -> list[str]:
    # A long grace: the process can only end early through the second signal.
    config = tmp_path / "streamd.toml"
    config.write_text(f"[server]\ngraceful_timeout = 60.0\nworkers = {workers}\n")
    return ["--config", str(config)]


def _begin_stop_with_request_in_flight(
    tmp_path: Path, processes: Processes, workers: int = 0
) -> tuple[Server, HeldRequest]:
    server = serve(processes, tmp_path / "data", args=_graceful_config(tmp_path, workers))
    held = HeldRequest(server.port, server.token(), LEGACY)  # streamd holds it in flight
    try:
        server.spawned.send_signal(signal.SIGTERM)
        # A closed listener shows the stop has begun.
        wait_for(lambda: refuses_connections(server.port), timeout=10, what="the listener to close")
        assert server.spawned.alive(), "streamd must wait for the request in flight"
    except BaseException:
        held.close()
        raise
    return server, held


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
def test_request_in_flight_at_sigterm_is_answered(
    tmp_path: Path, processes: Processes, workers: int
) -> None:
    server, held = _begin_stop_with_request_in_flight(tmp_path, processes, workers)
    try:
        status, body = held.finish()
    finally:
        held.close()
    assert status in (200, 503), (status, body)
    status_code = server.spawned.wait(10)
    assert status_code == 0, server.spawned.stderr()
    ids = legacy_ids(LEGACY)
    keys = check_journal(server.journal, ids if status == 200 else [])
    if status == 200:
        assert body == {"accepted": 4, "duplicates": 0}
    else:
        assert not keys, "a batch answered 503 must not be journaled"


def test_pipelined_request_during_the_grace_does_not_delay_the_exit(
    tmp_path: Path, processes: Processes
) -> None:
    server, held = _begin_stop_with_request_in_flight(tmp_path, processes)
    token = server.token()
    # The next request follows on the same connection before the answer to the first
    # (pipelining; a keep-alive sender that reuses the connection at once races the same way).
    held.body = (
        LEGACY
        + (
            "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(LEGACY)}\r\n\r\n"
        ).encode()
        + LEGACY
    )
    try:
        status, body = held.finish()
        assert (status, body) == (200, {"accepted": 4, "duplicates": 0})
        assert held.read_eof() == b"", "the second request must not be served during the grace"
    finally:
        held.close()
    # Nothing is in flight any more: streamd must not sit out the 60 s grace.
    assert server.spawned.wait(3) == 0


# -- (d) a second signal during the grace ------------------------------------------


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_during_the_grace_exits_at_once(
    tmp_path: Path, processes: Processes, second: signal.Signals, workers: int
) -> None:
    server, held = _begin_stop_with_request_in_flight(tmp_path, processes, workers)
    try:
        started = time.monotonic()
        server.spawned.send_signal(second)
        status = server.spawned.wait(10)
        elapsed = time.monotonic() - started
        assert status == 1, server.spawned.stderr()
        assert elapsed < 5, f"took {elapsed:.1f} s with a 60 s grace"
        assert held.read_eof() == b"", "the held request must not be answered"
    finally:
        held.close()
    assert_no_traceback(server.spawned.stderr())
    check_journal(server.journal, [])  # the body was never sent: nothing journaled, file intact
    assert not journal_keys(server.journal)


# -- (e) SIGHUP --------------------------------------------------------------------


def test_sighup_does_not_stop_streamd(tmp_path: Path, processes: Processes) -> None:
    server = serve(processes, tmp_path / "data")
    for count in (1, 2):  # one at a time: pending signals of one kind coalesce
        server.spawned.send_signal(signal.SIGHUP)
        server.wait_log("SIGHUP", count=count)
    assert server.spawned.alive()
    assert post(server.port, LEGACY, token=server.token()).status == 200
    # SIGHUP is not the "first signal": a SIGTERM afterwards is still graceful (exit 0).
    stop_gracefully(server)
    check_journal(server.journal, legacy_ids(LEGACY))


def test_the_journal_threads_carry_their_names_for_top_and_ps(
    tmp_path: Path, processes: Processes
) -> None:
    """``top -H`` and ``ps -L`` read ``/proc/PID/task/TID/comm``; without names every
    thread of the daemon showed the same start of its command line."""
    server = serve(processes, tmp_path / "data")
    assert post(server.port, LEGACY, token=server.token()).status == 200
    tasks = Path(f"/proc/{server.spawned.pid}/task")
    names = sorted(
        (task / "comm").read_text().strip() for task in tasks.iterdir() if task.name.isdigit()
    )
    for name in ("journal-writer", "journal-indexer", "journal-ckpt"):
        assert names.count(name) == 1, names
    stop_gracefully(server)


# -- (f) check-config --------------------------------------------------------------


def test_check_config_accepts_a_complete_file(tmp_path: Path, processes: Processes) -> None:
    (tmp_path / "push.token").write_text("# rotated monthly\n" + "p" * 32 + "\n")
    (tmp_path / "io.token").write_text("i" * 32 + "\n")
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "data"}"

[server]
listen = ["127.0.0.1:8080", "[::1]:8080"]
max_body_bytes = 4194304
max_in_flight = 128
graceful_timeout = 5.0
keep_alive_timeout = 30.0
read_timeout = 20.0

[journal]
synchronous = "normal"
commit_budget = 4.0
max_events_per_commit = 10000
max_queued_events = 100000
min_free_disk_mib = 64
cache_mib = 16
wal_max_mib = 128
checkpoint_interval = 2.0

[tokens]
files = ["{tmp_path / "push.token"}"]

[[sources]]
name = "push"
path = "/push"

[[sources]]
name = "io"
path = "/adobe/io"
token_files = ["{tmp_path / "io.token"}"]
query_token = false
"""
    )
    result = processes.run([*streamd_argv(), "check-config", "--config", str(config)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok"), result.stdout
    assert "push at /push" in result.stdout
    assert "io at /adobe/io" in result.stdout
    assert not (tmp_path / "data").exists(), "check-config must not start anything"


def test_check_config_without_a_file_accepts_the_defaults(
    tmp_path: Path, processes: Processes
) -> None:
    result = processes.run([*streamd_argv(), "check-config", "--data-dir", str(tmp_path / "data")])
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


_DUP_SOURCES = '[[sources]]\nname = "a"\npath = "{}"\n[[sources]]\nname = "{}"\npath = "{}"\n'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            '[server]\nlisten = ["127.0.0.1:8080"]\nmax_inflight = 10\n',
            ["key server", "max_inflight"],
            id="unknown-key",
        ),
        pytest.param('datadir = "/tmp/x"\n', ["datadir"], id="unknown-top-level-key"),
        pytest.param("[sever]\n", ["sever"], id="unknown-table"),
        pytest.param(
            '[server]\nmax_in_flight = "many"\n',
            ["key server.max_in_flight", "int"],
            id="wrong-type",
        ),
        pytest.param(
            '[journal]\nsynchronous = "off"\n', ["key journal.synchronous"], id="bad-choice"
        ),
        pytest.param(
            "[server]\ngraceful_timeout = -1.0\n",
            ["key server.graceful_timeout"],
            id="out-of-range",
        ),
        pytest.param(
            '[[sources]]\nname = "a"\npath = "/a"\nauth = "oauth"\n',
            ["key sources[0].auth"],
            id="wrong-type-in-array",
        ),
        pytest.param('[server\nlisten = "', ["not valid TOML", "line 1"], id="bad-toml"),
        pytest.param(b"\xff\xfe[server]\n", ["not valid TOML"], id="not-utf8"),
        pytest.param(
            '[server]\nlisten = ["localhost"]\n', ["key server.listen[0]"], id="listen-no-port"
        ),
        pytest.param(
            '[server]\nlisten = ["127.0.0.1:8080", "127.0.0.1:70000"]\n',
            ["key server.listen[1]", "70000"],
            id="listen-port-range",
        ),
        pytest.param(
            '[server]\nlisten = ["[::1:8080"]\n',
            ["key server.listen[0]"],
            id="listen-unclosed-bracket",
        ),
        pytest.param("[server]\nlisten = []\n", ["key server.listen"], id="listen-empty"),
        pytest.param(
            _DUP_SOURCES.format("/a", "b", "/a/"),
            ["key sources[1].path", "duplicate"],
            id="duplicate-source-path",
        ),
        pytest.param(
            _DUP_SOURCES.format("/", "b", "/"),
            ["key sources[1].path", "duplicate"],
            id="duplicate-root-path",
        ),
        pytest.param(
            _DUP_SOURCES.format("/a", "a", "/b"),
            ["key sources[1].name", "duplicate"],
            id="duplicate-source-name",
        ),
        pytest.param(
            '[[sources]]\nname = "a"\npath = "events"\n',
            ["key sources[0].path"],
            id="relative-source-path",
        ),
    ],
)
def test_check_config_rejects_a_bad_file(
    tmp_path: Path, processes: Processes, content: str | bytes, expected: list[str]
) -> None:
    config = tmp_path / "bad.toml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    result = processes.run([*streamd_argv(), "check-config", "--config", str(config)])
    _assert_config_error(result.returncode, result.stderr, config, expected)


def test_check_config_rejects_a_missing_file(tmp_path: Path, processes: Processes) -> None:
    config = tmp_path / "nowhere.toml"
    result = processes.run([*streamd_argv(), "check-config", "--config", str(config)])
    _assert_config_error(result.returncode, result.stderr, config, ["cannot read"])


def test_check_config_rejects_a_bad_listen_flag(tmp_path: Path, processes: Processes) -> None:
    result = processes.run(
        [*streamd_argv(), "check-config", "--listen", "127.0.0.1", "--data-dir", str(tmp_path)]
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("streamd: configuration error: <defaults>: --listen: ")
    assert_no_traceback(result.stderr)


def test_serve_rejects_a_bad_file_like_check_config(tmp_path: Path, processes: Processes) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nmax_inflight = 10\n")
    server = serve(processes, tmp_path / "data", args=["--config", str(config)], ready=False)
    status = server.spawned.wait(15)
    _assert_config_error(status, server.spawned.stderr(), config, ["max_inflight"])
    assert not (tmp_path / "data").exists(), "nothing may be created for a bad configuration"


def _assert_config_error(status: int, stderr: str, config: Path, expected: list[str]) -> None:
    assert status == 2, stderr
    assert_no_traceback(stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith(f"streamd: configuration error: {config}: "), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


# -- (g) an unusable journal -------------------------------------------------------


def _random_bytes(journal: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"random journal bytes seed={seed}")
    journal.write_bytes(random.Random(seed).randbytes(16384))


def _newer_schema(journal: Path) -> None:
    with sqlite3.connect(journal) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()


def _foreign_database(journal: Path) -> None:
    with sqlite3.connect(journal) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers VALUES (1, 'kept as it is')")
    conn.close()


def _directory(journal: Path) -> None:
    journal.mkdir()


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        pytest.param(_random_bytes, "not a database", id="random-bytes"),
        pytest.param(_newer_schema, "newer", id="user-version-99"),
        pytest.param(_foreign_database, "not a streamd journal", id="foreign-sqlite-file"),
        pytest.param(_directory, "cannot open", id="directory"),
    ],
)
def test_serve_refuses_an_unusable_journal(
    tmp_path: Path, processes: Processes, spoil: Any, expected: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    journal = data_dir / "journal.db"
    spoil(journal)
    before = journal.read_bytes() if journal.is_file() else None

    server = serve(processes, data_dir, ready=False)
    status = server.spawned.wait(15)
    stderr = server.spawned.stderr()
    assert status != 0
    assert "streamd ready" not in server.spawned.stdout()
    assert_no_traceback(stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("streamd:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"streamd: journal error: {journal}: "), errors[0]
    assert expected in errors[0], errors[0]
    if spoil is _random_bytes:
        assert journal.read_bytes() == before, "a file streamd refuses must be left as it was"


@pytest.mark.parametrize("spoil", [_newer_schema, _foreign_database], ids=["newer", "foreign"])
def test_a_refused_sqlite_file_is_left_unchanged(
    tmp_path: Path, processes: Processes, spoil: Any
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    journal = data_dir / "journal.db"
    spoil(journal)
    before = journal.read_bytes()
    server = serve(processes, data_dir, ready=False)
    assert server.spawned.wait(15) != 0
    assert journal.read_bytes() == before


@pytest.mark.parametrize("damage", ["removed", "garbage"])
def test_files_beside_the_journal_are_only_derived_state(
    tmp_path: Path, processes: Processes, damage: str
) -> None:
    """The journal is the only state: lose or spoil anything else after a crash, dedup holds."""
    data_dir = tmp_path / "data"
    server = serve(processes, data_dir, name="before")
    token = server.token()
    batch = fixture_bytes("lads_batch.json")
    assert post(server.port, LEGACY, token=token).body == {"accepted": 4, "duplicates": 0}
    assert post(server.port, batch, token=token).body == {"accepted": 6, "duplicates": 0}
    server.spawned.popen.kill()  # a crash: nothing is closed or checkpointed
    assert server.spawned.wait(10) == -signal.SIGKILL

    essential = {"api-token", "admin-token", "journal.db", "journal.db-wal", "journal.db-shm"}
    derived = sorted(p for p in data_dir.iterdir() if p.name not in essential)
    print(f"{damage}: {[p.name for p in derived]}")
    rng = random.Random(len(derived))
    for path in derived:
        if damage == "removed":
            path.unlink()
        else:
            path.write_bytes(rng.randbytes(max(path.stat().st_size, 4096)))

    server = serve(processes, data_dir, name="after")
    assert post(server.port, LEGACY, token=token).body == {"accepted": 0, "duplicates": 4}
    assert post(server.port, batch, token=token).body == {"accepted": 0, "duplicates": 6}
    stop_gracefully(server)
    keys = check_journal(server.journal, legacy_ids(LEGACY))
    assert len(keys) == 10


# -- (h) the port is taken ----------------------------------------------------------


def test_serve_on_a_port_in_use_exits_with_a_message(tmp_path: Path, processes: Processes) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve(processes, tmp_path / "data", port=port, ready=False)
        status = server.spawned.wait(15)
    stderr = server.spawned.stderr()
    assert status != 0
    assert "streamd ready" not in server.spawned.stdout()
    assert_no_traceback(stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("streamd:")]
    assert len(errors) == 1, stderr
    assert f"127.0.0.1:{port}" in errors[0], errors[0]


# -- (i) journal stats ---------------------------------------------------------------


def _stats(processes: Processes, data_dir: Path) -> dict[str, Any]:
    result = processes.run(
        [*streamd_argv(), "journal", "stats", "--data-dir", str(data_dir), "--json"]
    )
    assert result.returncode == 0, result.stderr
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats


def test_journal_stats_counts_what_was_delivered(tmp_path: Path, processes: Processes) -> None:
    data_dir = tmp_path / "data"
    server = serve(processes, data_dir)
    token = server.token()
    deliveries = [
        "legacy_push.json",  # 4 activities
        "lads_single.json",  # 1
        "lads_batch.json",  # 6
        "audit_wrapper.json",  # 1 audit
        "audit_old_wrapper.json",  # 1 audit
        "notification.json",  # 1 notification
        "legacy_push.json",  # the same 4 again: duplicates
        "lads_batch.json",  # the same 6 again: duplicates
    ]
    answers = []
    for name in deliveries:
        reply = post(server.port, fixture_bytes(name), token=token)
        assert reply.status == 200, (name, reply)
        answers.append(reply.body)
    # Not events: a refused body and the POST challenge are no deliveries.
    assert post(server.port, b"{", token=token).status == 400
    assert post(server.port, fixture_bytes("challenge_post.json"), token=token).status == 200
    accepted = sum(a["accepted"] for a in answers)
    duplicates = sum(a["duplicates"] for a in answers)
    assert (accepted, duplicates) == (14, 10)

    for when in ("live", "stopped"):
        if when == "stopped":
            stop_gracefully(server)
        stats = _stats(processes, data_dir)
        assert stats["schema_version"] >= 1
        assert stats["events"] == accepted, when
        assert stats["by_stream"] == {"activity": 11, "audit": 2, "notification": 1}, when
        assert stats["deliveries"] == len(deliveries), when
        assert stats["deliveries_by_source"] == {"events": len(deliveries)}, when
        assert stats["events_received"] == accepted + duplicates, when
        assert stats["events_accepted"] == accepted, when
        assert stats["duplicates"] == duplicates, when
        assert stats["first"]["seq"] == 1
        assert stats["last"]["seq"] == accepted
        assert sum(t["events"] for t in stats["by_type"]) == accepted

    text = processes.run(
        [*streamd_argv(), "journal", "stats", "--data-dir", str(data_dir), "--format", "table"]
    )
    assert text.returncode == 0, text.stderr
    assert f"events      {accepted} " in text.stdout
    assert f"duplicates  {duplicates} of {accepted + duplicates}" in text.stdout


def test_journal_stats_without_a_journal_fails_cleanly(
    tmp_path: Path, processes: Processes
) -> None:
    result = processes.run(
        [*streamd_argv(), "journal", "stats", "--data-dir", str(tmp_path / "none")]
    )
    assert result.returncode == 1
    assert_no_traceback(result.stderr)
    assert result.stderr.startswith("streamd: journal error: "), result.stderr
    assert not os.path.exists(tmp_path / "none"), "stats must not create anything"
