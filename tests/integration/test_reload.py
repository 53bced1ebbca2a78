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
