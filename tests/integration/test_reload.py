"""SIGHUP on the real service: what a reload changes live, and what it leaves alone."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from streamd.service import serve
from streamd.service.config import Config
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, make_config


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.mark.usefixtures("root_level")
async def test_reload_applies_log_level_and_sources_and_warns_about_the_rest(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml = tmp_path / "streamd.toml"
    toml.write_text('log_level = "warning"\n')

    def load() -> Config:
        return make_config(data_dir, toml.read_text())

    caplog.set_level(logging.DEBUG, logger="streamd")
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            partial(serve, load(), reload=load, log_level_from_config=True)
        )
        toml.write_text(
            'log_level = "debug"\n[journal]\ncache_mib = 64\n'
            '[[sources]]\nname = "moved"\npath = "/moved"\n'
        )
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while "configuration reloaded" not in caplog.text:
                await trio.sleep(0.02)
        assert logging.getLogger().level == logging.DEBUG
        assert "a change to [journal] takes effect only after a restart" in caplog.text
        assert [s.path for s in running.app.sources()] == ["/moved"]
        async with httpx.AsyncClient() as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            body = fixture_bytes("lads_single")
            moved = await client.post(running.binds[0] + "/moved", content=body, headers=auth)
            old = await client.post(running.binds[0] + "/events", content=body, headers=auth)
        assert (moved.status_code, old.status_code) == (200, 404)
        nursery.cancel_scope.cancel()


async def test_reload_adds_changes_and_removes_sinks(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml = tmp_path / "streamd.toml"
    sink_a = '[[sinks]]\nname = "a"\nkind = "file"\n[sinks.file]\ndirectory = "out-a"\n'
    toml.write_text(sink_a)

    def load() -> Config:
        return make_config(data_dir, toml.read_text())

    caplog.set_level(logging.INFO, logger="streamd")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        running = await nursery.start(partial(serve, load(), reload=load))
        drain = running.drain

        async def post(name: str) -> None:
            reply = await client.post(
                running.binds[0] + "/events", content=fixture_bytes(name), headers=auth
            )
            assert reply.status_code == 200

        def confirmed() -> dict[str, int]:
            return {s.name: s.confirmed for s in drain.statistics()}

        async def until(condition: object, what: str) -> None:
            with trio.fail_after(10):
                while not condition():  # type: ignore[operator]
                    await trio.sleep(0.02)

        await post("lads_batch")  # 6 events
        await until(lambda: confirmed() == {"a": 6}, "a drained")
        # a's filters change (only audit events now) and b appears.
        toml.write_text(
            sink_a
            + '[[sinks.filters]]\nstreams = ["audit"]\n'
            + '[[sinks]]\nname = "b"\nkind = "file"\n[sinks.file]\ndirectory = "out-b"\n'
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: "configuration reloaded" in caplog.text, "the reload")
        assert "sink a: restarted with its new settings" in caplog.text
        assert "sink b: added, starting at cursor 0" in caplog.text
        await until(lambda: confirmed().get("b") == 6, "b caught up from the start")
        await post("legacy_push")  # 4 activities: not for a any more
        await post("audit_wrapper")  # 1 audit event: for both
        await until(lambda: confirmed() == {"a": 7, "b": 11}, "both drained")
        # b goes away: it stops; a goes on.
        caplog.clear()
        toml.write_text(sink_a + '[[sinks.filters]]\nstreams = ["audit"]\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: "configuration reloaded" in caplog.text, "the second reload")
        assert "sink b: removed (its cursor is kept)" in caplog.text
        assert [s.name for s in drain.statistics()] == ["a"]
        assert running.retention.sinks == ("a",)
        nursery.cancel_scope.cancel()
