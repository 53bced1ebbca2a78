"""The Journaling API pull source against the emulator over real loopback HTTP.

The emulator (``streamd.emit.journal_api``) is also the IMS token endpoint, so every
request carries a token obtained by the client-credentials grant. The journal is a
real SQLite file written by the real writer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from streamd.auth.ims import ClientCredentials
from streamd.cli import main
from streamd.core.timeparse import parse_seek
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.journal_api import IMS_PATH, PATH, JournalApi, position
from streamd.ingest.pull import PullSettings, PullSource
from streamd.journal import WriterOptions, open_journal
from streamd.service import serve
from streamd.service.config import Config

from .conftest import Server, StartServer, make_config

CLIENT_ID = "pull-client"
SECRET = "pull-secret-5f4dcc3b5aa765d61d8327deb882cf99"
ORG = "ORG123@AdobeOrg"


@dataclass
class Emulator:
    api: JournalApi
    url: str  # http://127.0.0.1:PORT
    handler: list[Callable[[Request], Reply | None]]  # optional overrides, tried first


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    api = JournalApi(
        seed=7,
        initial=1200,
        retry_after=1,
        api_key=CLIENT_ID,
        org_id=ORG,
        client_secret=SECRET,
    )
    overrides: list[Callable[[Request], Reply | None]] = []

    async def handle(request: Request) -> Reply:
        for override in overrides:
            reply = override(request)
            if reply is not None:
                return reply
        return await api.handle(request)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve_handler, handle, "127.0.0.1:0")
        yield Emulator(api, binds[0], overrides)
        nursery.cancel_scope.cancel()


def pull_toml(emulator: Emulator, secret_file: Path, **extra: object) -> str:
    lines = [
        "[[pulls]]",
        'name = "adobe-journal"',
        f'url = "{emulator.url}{PATH}"',
        f'ims_url = "{emulator.url}{IMS_PATH}"',
        f'org_id = "{ORG}"',
        f'client_id = "{CLIENT_ID}"',
        f'client_secret_file = "{secret_file}"',
        'scope = "AdobeID,openid,read_organizations"',
        "min_wait = 0.1",
        "backoff_base = 0.05",
        "backoff_cap = 0.5",
    ]
    for key, value in extra.items():
        lines.append(f"{key} = {orjson.dumps(value).decode()}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "pull-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def pull_of(server: Server, name: str = "adobe-journal") -> PullSource:
    return server.running.pulls.running[name].source


async def caught_up(server: Server, emulator: Emulator, name: str = "adobe-journal") -> None:
    """Wait until the pull reached the emulator's end (its position is the last event)."""
    source = pull_of(server, name)
    last = position(emulator.api.available() - 1)
    await server.wait_for(
        lambda: source.stats.position == last and source.stats.state == "caught-up",
        f"the pull to reach {last}; stats {source.stats}",
    )


def rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def pulled_keys(db: Path, name: str = "adobe-journal") -> list[str]:
    return [str(r[0]) for r in rows(db, "SELECT event_key FROM events WHERE source = ?", name)]


async def test_everything_is_pulled_once_with_the_position_saved(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, limit=250))
    await caught_up(server, emulator)
    keys = pulled_keys(server.journal)
    expected = [emulator.api.event(i)["id"] for i in range(1200)]
    assert keys == expected  # every event, in journal order, once
    # The position was saved with the events: 5 pages of 250, none journaled twice.
    assert rows(
        server.journal,
        "SELECT position, restart, pages, events, accepted FROM pull_positions",
    ) == [(position(1199), None, 5, 1200, 1200)]
    assert rows(
        server.journal,
        "SELECT count(*), sum(events), sum(duplicates) FROM deliveries WHERE source = ?",
        "adobe-journal",
    ) == [(5, 1200, 0)]
    # The columns were extracted as for a push.
    streams = {r[0] for r in rows(server.journal, "SELECT DISTINCT stream FROM events")}
    assert streams == {"activity", "audit", "notification"}
    assert emulator.api.token_requests == 1  # one token, reused
    assert set(emulator.api.statuses) == {200, 204}


async def test_a_page_larger_than_the_writer_takes_goes_in_as_several_batches(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    # Pages of 250 and a queue of 100: every batch must fit the queue bound (one that
    # does not is refused even into an empty queue), so each page goes in as batches of
    # 50 (half the queue), the position saved with the last one only.
    toml = "[journal]\nmax_queued_events = 100\n" + pull_toml(emulator, secret_file, limit=250)
    server = await start_server(toml)
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
    assert rows(
        server.journal,
        "SELECT position, restart, pages, events, accepted FROM pull_positions",
    ) == [(position(1199), None, 5, 1200, 1200)]
    assert rows(
        server.journal,
        "SELECT count(*), max(events), sum(events) FROM deliveries WHERE source = ?",
        "adobe-journal",
    ) == [(24, 50, 1200)]  # 4 pages of 5 batches, the last page (200) of 4
    assert pull_of(server).stats.pages == 5


async def test_a_split_page_saves_its_position_only_with_its_last_batch(
    start_server: StartServer, emulator: Emulator, secret_file: Path, data_dir: Path
) -> None:
    # The third batch of the first page fails (a trigger refuses one of its events):
    # the first two are in, but the position is not saved, so the page is fetched again
    # and its first batches come back as duplicates, never twice in the journal.
    poisoned = emulator.api.event(120)["id"]
    async with open_journal(str(data_dir / "journal.db"), WriterOptions()):
        pass  # the schema, for the trigger
    with sqlite3.connect(data_dir / "journal.db") as conn:
        # A trigger takes no parameters; the id is the emulator's (hex and dashes).
        conn.execute(
            f"CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_key = '{poisoned}' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned event'); END"
        )
    toml = "[journal]\nmax_queued_events = 100\n" + pull_toml(emulator, secret_file, limit=250)
    server = await start_server(toml)
    source = pull_of(server)
    await server.wait_for(lambda: source.stats.failures >= 2, "the poisoned batch to fail twice")
    assert "poisoned event" in (source.stats.last_error or "")
    assert rows(server.journal, "SELECT count(*) FROM pull_positions") == [(0,)]
    assert sorted(pulled_keys(server.journal)) == sorted(
        emulator.api.event(i)["id"] for i in range(100)
    )
    with sqlite3.connect(server.journal) as conn:
        conn.execute("DROP TRIGGER poison")
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
    # Every event of every page counted once per page; the first page's first 100 were
    # duplicates of its earlier attempts.
    assert rows(
        server.journal,
        "SELECT position, pages, events, accepted FROM pull_positions",
    ) == [(position(1199), 5, 1200, 1100)]


async def test_new_events_after_a_204_are_pulled_from_the_next_link(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    server = await start_server(pull_toml(emulator, secret_file))
    await caught_up(server, emulator)
    requests_at_end = emulator.api.requests
    await trio.sleep(0.5)  # retry-after 1 s: at most one more request meanwhile
    assert emulator.api.requests - requests_at_end <= 1
    emulator.api.initial += 300  # the journal grows
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1500)]


async def test_a_410_records_the_gap_and_restarts_from_the_oldest(
    start_server: StartServer,
    emulator: Emulator,
    secret_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, limit=400))
    await caught_up(server, emulator)
    # Time passes: positions up to 1999 fall out of retention and 1000 more arrive.
    emulator.api.expired, emulator.api.initial = 2000, 2500
    await caught_up(server, emulator)
    gaps = rows(server.journal, "SELECT source, lost_after, restarted_from FROM pull_gaps")
    assert gaps == [("adobe-journal", position(1199), "oldest")]
    assert pull_of(server).stats.gaps == 1
    expected = [emulator.api.event(i)["id"] for i in (*range(1200), *range(2000, 2500))]
    assert pulled_keys(server.journal) == expected
    assert 410 in emulator.api.statuses
    # The operator sees it in journal stats.
    capsys.readouterr()
    assert main(["journal", "stats", "--journal", str(server.journal), "--json"]) == 0
    (pull,) = json.loads(capsys.readouterr().out)["pulls"]
    assert pull["name"] == "adobe-journal" and pull["position"] == position(2499)
    assert pull["gaps"] == 1 and pull["recent_gaps"][0]["lost_after"] == position(1199)
    assert main(["journal", "stats", "--journal", str(server.journal), "--format", "table"]) == 0
    text = capsys.readouterr().out
    assert f"pull        adobe-journal: position {position(2499)}, 1700 events" in text
    assert f"gap       after {position(1199)}: past retention at" in text


async def test_a_410_can_restart_from_the_latest(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, on_expired="latest"))
    await caught_up(server, emulator)
    emulator.api.expired, emulator.api.initial = 1500, 1600
    await server.wait_for(lambda: pull_of(server).stats.gaps == 1, "the gap")
    # The restart asks for the latest event (1600) and gets a 204; only then do more
    # arrive: were they there first, "latest" would already be past them.
    waits = emulator.api.statuses.get(204, 0)
    await server.wait_for(
        lambda: emulator.api.statuses.get(204, 0) > waits, "the pull to ask for the latest"
    )
    # From the latest: nothing of 1500..1599; then what arrives later.
    emulator.api.initial = 1650
    await caught_up(server, emulator)
    assert pulled_keys(server.journal)[1200:] == [
        emulator.api.event(i)["id"] for i in range(1600, 1650)
    ]
    assert rows(server.journal, "SELECT restarted_from FROM pull_gaps") == [("latest",)]


async def test_start_latest_and_seek_skip_the_past(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, start="latest"))
    source = pull_of(server)
    await server.wait_for(lambda: source.stats.state == "caught-up", "caught up")
    assert pulled_keys(server.journal) == []
    emulator.api.initial += 20
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200, 1220)]


@pytest.mark.parametrize(
    ("start", "seek", "most"),
    [
        ("-PT30S", "-PT30S", 31),
        ("-PT90S", "-PT1M30S", 91),
        ("-P1DT2H", "-PT26H", 1200),
        ("PT2H", "-PT2H", 1200),  # the one time grammar: that long ago
        ("30s", "-PT30S", 31),
        ("2h", "-PT2H", 1200),
    ],
)
async def test_a_seek_start_is_sent_in_the_form_adobe_documents(
    start_server: StartServer,
    emulator: Emulator,
    secret_file: Path,
    start: str,
    seek: str,
    most: int,
) -> None:
    """Any duration back is accepted; the Journaling API only ever sees -PT…H…M…S."""
    seeks: list[str] = []

    def record(request: Request) -> Reply | None:
        if request.path == PATH and "seek" in request.query:
            seeks.append(request.query["seek"])
        return None

    emulator.handler.append(record)
    server = await start_server(pull_toml(emulator, secret_file, start=start))
    await caught_up(server, emulator)
    assert seeks[:1] == [seek]
    # The initial events are one second apart: seconds back skip most of them, a day none.
    pulled = len(pulled_keys(server.journal))
    assert 0 < pulled <= most and (most < 1200 or pulled == 1200)


async def test_a_time_start_is_sent_as_how_long_ago_it_was(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    seeks: list[str] = []

    def record(request: Request) -> Reply | None:
        if request.path == PATH and "seek" in request.query:
            seeks.append(request.query["seek"])
        return None

    emulator.handler.append(record)
    before = datetime.now(UTC)
    server = await start_server(pull_toml(emulator, secret_file, start="2026-01-01"))
    await caught_up(server, emulator)
    assert re.fullmatch(r"-PT\d+H(\d+M)?(\d+(\.\d+)?S)?", seeks[0]), seeks[0]
    assert parse_seek(seeks[0]) >= before - datetime(2026, 1, 1, tzinfo=UTC)
    assert len(pulled_keys(server.journal)) == 1200


async def test_push_and_pull_of_the_same_events_are_journaled_once(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    emulator.api.initial = 0  # the journal is empty while the push delivers
    server = await start_server(pull_toml(emulator, secret_file, limit=500))
    await server.wait_for(lambda: pull_of(server).stats.state == "caught-up", "an empty journal")
    # I/O Events pushes the same CloudEvents that the journal will list: 0..99.
    reply = await server.post(orjson.dumps([emulator.api.event(i) for i in range(100)]))
    assert reply.status_code == 200 and reply.json() == {"accepted": 100, "duplicates": 0}
    emulator.api.initial = 1200
    await caught_up(server, emulator)
    keys = rows(server.journal, "SELECT event_key, count(*) FROM events GROUP BY event_key")
    assert len(keys) == 1200 and all(n == 1 for _, n in keys)
    assert rows(
        server.journal,
        "SELECT sum(accepted), sum(duplicates) FROM deliveries WHERE source = 'adobe-journal'",
    ) == [(1100, 100)]
    assert 400 not in emulator.api.statuses  # the empty journal's next link was usable
    # ... and pushing pulled ones afterwards changes nothing either.
    reply = await server.post(orjson.dumps([emulator.api.event(i) for i in range(1100, 1200)]))
    assert reply.json() == {"accepted": 0, "duplicates": 100}


async def test_429_and_5xx_back_off_honouring_retry_after_and_never_spin(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    emulator.api.fail_next(503, 3)
    emulator.api.fail_next(429, 1, retry_after="1")
    emulator.api.fail_next(500, 2)
    server = await start_server(pull_toml(emulator, secret_file, limit=600))
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
    assert emulator.api.statuses[503] == 3 and emulator.api.statuses[500] == 2
    # A journal that keeps failing: requests stay spaced by the backoff (cap 0.5 s).
    emulator.api.fail_next(503, 10_000)
    emulator.api.initial += 10
    source = pull_of(server)
    before = emulator.api.requests
    await trio.sleep(2.0)
    assert 1 <= emulator.api.requests - before <= 25
    assert source.stats.failures >= 1 and "503" in (source.stats.last_error or "")
    emulator.api.failures.clear()
    await caught_up(server, emulator)
    assert source.stats.failures == 0 and source.stats.last_error is None


async def test_an_expired_or_revoked_token_is_renewed(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, limit=300))
    await caught_up(server, emulator)
    assert emulator.api.token_requests == 1
    emulator.api.issued.clear()  # IMS revoked every token: the journal answers 401
    emulator.api.initial += 100
    await caught_up(server, emulator)
    assert emulator.api.token_requests == 2
    assert emulator.api.statuses[401] == 1
    assert len(pulled_keys(server.journal)) == 1300


async def test_a_wrong_client_secret_is_reported_without_the_secret(
    start_server: StartServer, emulator: Emulator, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret-0123456789\n")
    server = await start_server(pull_toml(emulator, wrong))
    source = pull_of(server)
    await server.wait_for(lambda: source.stats.failures >= 2, "two failed attempts")
    error = source.stats.last_error or ""
    assert "401" in error and "invalid_client" in error
    assert "not-the-secret" not in error and SECRET not in error
    assert emulator.api.requests == 0  # the journal was never asked without a token
    assert pulled_keys(server.journal) == []


async def test_a_next_link_to_another_origin_is_not_followed(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    async def other_origin(request: Request) -> Reply:
        reply = await emulator.api.handle(request)
        reply.headers = [
            (k, v.replace("</journal", "<http://198.51.100.7/journal") if k == "link" else v)
            for k, v in reply.headers
        ]
        return reply

    # The override answers through the emulator, so it must not recurse into itself.
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve_handler, other_origin, "127.0.0.1:0")
        evil = Emulator(emulator.api, binds[0], [])
        server = await start_server(pull_toml(evil, secret_file, limit=500))
        await caught_up(server, evil)
        assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
        assert pull_of(server).stats.failures == 0
        nursery.cancel_scope.cancel()


async def test_a_broken_page_stalls_without_journaling_then_recovers(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    broken = {"left": 3}

    def truncate(request: Request) -> Reply | None:
        if request.path != PATH or broken["left"] == 0 or "since" not in request.query:
            return None
        broken["left"] -= 1
        return Reply(200, b'{"events": [{"position": "p1", "event": {"id": "x"', [])

    emulator.handler.append(truncate)
    server = await start_server(pull_toml(emulator, secret_file, limit=600))
    await caught_up(server, emulator)
    source = pull_of(server)
    assert broken["left"] == 0
    # The first page (no since) landed; the truncated answers journaled nothing.
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
    assert source.stats.responses["200"] >= 5
    assert rows(server.journal, "SELECT pages FROM pull_positions") == [(2,)]


async def test_events_without_an_id_are_kept_under_their_position(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    def odd(request: Request) -> Reply | None:
        if request.path != PATH or "since" in request.query:
            return None
        events = [
            {"position": "q1", "event": {"type": "no-id", "data": {}}},
            {"position": "q2", "event": [1, 2]},
            {"position": "q3", "event": {"id": "real-1", "type": "t"}},
        ]
        return Reply(200, orjson.dumps({"events": events}), [])

    emulator.handler.append(odd)
    server = await start_server(pull_toml(emulator, secret_file))
    source = pull_of(server)
    await server.wait_for(lambda: source.stats.pages >= 1, "the odd page")
    got = rows(
        server.journal,
        "SELECT event_key, stream, raw FROM events WHERE source = 'adobe-journal' ORDER BY seq",
    )
    assert got[:3] == [
        ("journal-position:q1", "other", '{"type":"no-id","data":{}}'),
        ("journal-position:q2", "other", "[1,2]"),
        ("real-1", "other", '{"id":"real-1","type":"t"}'),
    ]
    assert source.stats.unkeyed == 2


async def test_reload_starts_restarts_and_stops_pulls(
    data_dir: Path,
    tmp_path: Path,
    emulator: Emulator,
    secret_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    toml = tmp_path / "streamd.toml"
    toml.write_text("")

    def load() -> Config:
        return make_config(data_dir, toml.read_text())

    async def reload(expect: str) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while expect not in caplog.text:
                await trio.sleep(0.02)

    caplog.set_level(logging.INFO, logger="streamd")
    async with trio.open_nursery() as nursery:
        running = await nursery.start(partial(serve, load(), reload=load))
        assert running.pulls.running == {}
        toml.write_text(pull_toml(emulator, secret_file, limit=400))
        await reload("SIGHUP: pull adobe-journal started")
        source = running.pulls.running["adobe-journal"].source
        with trio.fail_after(10):
            while source.stats.position != position(1199):
                await trio.sleep(0.02)
        # A changed entry restarts from its saved position: nothing pulled twice.
        toml.write_text(pull_toml(emulator, secret_file, limit=300))
        emulator.api.initial = 1500
        await reload("SIGHUP: pull adobe-journal restarted")
        restarted = running.pulls.running["adobe-journal"].source
        assert restarted is not source and restarted.settings.limit == 300
        with trio.fail_after(10):
            while restarted.stats.position != position(1499):
                await trio.sleep(0.02)
        assert restarted.stats.duplicates == 0
        # The same file again: nothing restarts.
        await reload("configuration reloaded")
        caplog.clear()
        await reload("configuration reloaded")
        # No start, restart or stop (the pull's own "caught up" may still come: it is
        # logged when a poll finds nothing new, which can be after the clear).
        assert "SIGHUP: pull adobe-journal" not in caplog.text
        assert running.pulls.running["adobe-journal"].source is restarted
        toml.write_text("")
        await reload("SIGHUP: pull adobe-journal stopped")
        assert running.pulls.running == {}
        with trio.fail_after(5):
            while restarted.stats.state != "stopped":
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    keys = pulled_keys(data_dir / "journal.db")
    assert keys == [emulator.api.event(i)["id"] for i in range(1500)]


def _settings(url: str, **kw: object) -> PullSettings:
    base: dict[str, object] = {
        "name": "p", "url": url, "org_id": ORG, "api_key": CLIENT_ID,
        "min_wait": 0.1, "backoff_base": 0.05, "backoff_cap": 0.3,
    }  # fmt: skip
    return PullSettings(**{**base, **kw})  # type: ignore[arg-type]


async def pull_until_failures(
    emulator: Emulator, settings: PullSettings, journal: Path, failures: int
) -> PullSource:
    """Run a pull source alone on a fresh journal until it failed ``failures`` times."""
    tokens = ClientCredentials(emulator.url + IMS_PATH, CLIENT_ID, SECRET, "AdobeID")
    async with open_journal(str(journal), WriterOptions(min_free_disk_bytes=0)) as j:
        source = PullSource(settings, j, tokens)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            with trio.fail_after(10):
                while source.stats.failures < failures:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    return source


async def test_a_journal_that_cannot_be_reached_is_retried_with_backoff(
    emulator: Emulator, tmp_path: Path
) -> None:
    settings = _settings("http://127.0.0.1:9/journal", timeout=2)
    source = await pull_until_failures(emulator, settings, tmp_path / "j.db", 3)
    assert "ConnectError" in (source.stats.last_error or "")
    assert source.stats.responses == {"error": source.stats.requests}
    assert source.stats.state == "stopped"


async def test_an_oversized_page_is_refused_and_nothing_journaled(
    emulator: Emulator, tmp_path: Path
) -> None:
    settings = _settings(emulator.url + PATH, limit=1000, max_page_bytes=64 * 1024)
    path = tmp_path / "j.db"
    source = await pull_until_failures(emulator, settings, path, 2)
    assert "a journal page larger than 65,536 bytes" in (source.stats.last_error or "")
    assert source.stats.responses.get("too-large", 0) >= 2
    assert pulled_keys(path, "p") == []


async def test_a_next_link_with_an_empty_position_is_not_followed(
    start_server: StartServer, emulator: Emulator, secret_file: Path
) -> None:
    empty = {"answers": 0}
    followed: list[str] = []

    def hollow(request: Request) -> Reply | None:
        if request.path == PATH and request.query.get("since") == "":
            followed.append(request.raw_query)
        if request.path != PATH or empty["answers"] >= 3:
            return None
        empty["answers"] += 1
        return Reply(204, b"", [("retry-after", "0"), ("link", '</journal?since=>; rel="next"')])

    emulator.handler.append(hollow)
    server = await start_server(pull_toml(emulator, secret_file, limit=600))
    await caught_up(server, emulator)
    assert empty["answers"] == 3 and followed == []
    assert pulled_keys(server.journal) == [emulator.api.event(i)["id"] for i in range(1200)]
    assert pull_of(server).stats.failures == 0


async def test_a_running_pull_is_started_over_through_the_admin_listener(
    start_server: StartServer,
    emulator: Emulator,
    secret_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = await start_server(pull_toml(emulator, secret_file, limit=400))
    await caught_up(server, emulator)
    source = pull_of(server)
    base = server.running.admin_binds[0]
    url = base + "/pulls/reset"
    auth = {"Authorization": f"Bearer {(server.data_dir / 'admin-token').read_text().strip()}"}

    async def reset(body: bytes, headers: dict[str, str] = auth) -> httpx.Response:
        response: httpx.Response = await server.client.post(url, content=body, headers=headers)
        return response

    # Refusals, each with its reason, and nothing changed.
    for body, message in [
        (b'{"name": "nope"}', "no pull named 'nope' runs here (pulls: adobe-journal)"),
        (b'{"name": "adobe-journal", "from": "middle"}', "`$.from`"),
        (b'{"name": "adobe-journal", "extra": 1}', "unknown field `extra`"),
        (b'{"name": "adobe-', "not valid JSON"),
        (b"{}", "missing required field `name`"),
    ]:
        response = await reset(body)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    assert (await reset(b'{"name": "adobe-journal"}', headers={})).status_code == 401
    # A command that named another journal reached this daemon: refused, nothing done.
    other = {**auth, "X-Streamd-Journal-Id": "0f" * 16}
    response = await reset(b'{"name": "adobe-journal"}', headers=other)
    assert response.status_code == 409, response.text
    assert f"not the journal named ({'0f' * 16})" in response.json()["error"]
    assert (await server.client.get(url, headers=auth)).status_code == 405
    assert pull_of(server) is source
    saved = "SELECT position, restart FROM pull_positions"
    assert rows(server.journal, saved) == [(position(1199), None)]

    # From the oldest: the pull stops, starts over and pulls everything again; every
    # event is a duplicate, journaled once.
    response = await reset(b'{"name": "adobe-journal", "from": "oldest"}')
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "adobe-journal", "was": position(1199), "from": "oldest"}
    await server.wait_for(
        lambda: source.stats.duplicates == 1200 and source.stats.position == position(1199),
        f"everything pulled again; stats {source.stats}",
    )
    expected = [emulator.api.event(i)["id"] for i in range(1200)]
    assert pulled_keys(server.journal) == expected
    assert rows(
        server.journal,
        "SELECT sum(accepted), sum(duplicates) FROM deliveries WHERE source = ?",
        "adobe-journal",
    ) == [(1200, 1200)]
    assert rows(server.journal, saved) == [(position(1199), None)]

    # The command finds the daemon holding the journal and goes through its admin listener.
    capsys.readouterr()
    argv = ["journal", "pull-reset", "--data-dir", str(server.data_dir), "--admin-url", base]
    argv += ["adobe-journal", "--from", "latest"]
    assert await trio.to_thread.run_sync(main, argv) == 0
    assert "it runs again from the latest event" in capsys.readouterr().out
    await server.wait_for(lambda: source.stats.state == "caught-up", "caught up at the end")
    emulator.api.initial += 50  # only what arrives after the reset is pulled
    await caught_up(server, emulator)
    assert pulled_keys(server.journal) == expected + [
        emulator.api.event(i)["id"] for i in range(1200, 1250)
    ]
    assert source.stats.duplicates == 1200
    # A name the daemon does not run: the daemon's reason, exit status 1.
    assert await trio.to_thread.run_sync(main, [*argv[:-3], "nope"]) == 1
    assert "no pull named 'nope' runs here" in capsys.readouterr().err
    # Another running journal, but --admin-url of this daemon: it refuses (409).
    elsewhere = server.data_dir.parent / "elsewhere" / "journal.db"
    async with open_journal(str(elsewhere), WriterOptions()):
        wrong = ["journal", "pull-reset", "--journal", str(elsewhere), "--admin-url", base]
        wrong += ["--token-file", str(server.data_dir / "admin-token"), "adobe-journal"]
        assert await trio.to_thread.run_sync(main, wrong) == 1
    assert "this streamd writes journal" in capsys.readouterr().err
    assert rows(server.journal, saved) == [(position(1249), None)]  # untouched
