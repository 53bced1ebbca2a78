"""The real service on a loopback port, and a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from streamd.service import Running, serve
from streamd.service.config import Config, decode_config

TOKEN = "integration-token-0123456789"


@dataclass
class Server:
    url: str
    token: str
    data_dir: Path
    client: httpx.AsyncClient
    announced: list[str]
    running: Running

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (at most 10 s) until ``condition()`` holds."""
        with trio.fail_after(10):
            while not condition():
                await trio.sleep(0.01)
        assert condition(), what

    @property
    def journal(self) -> Path:
        return self.data_dir / "journal.db"

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def post(self, body: bytes, path: str = "/events", **kw: Any) -> httpx.Response:
        headers = {"Content-Type": "application/json", **self.auth(), **kw.pop("headers", {})}
        return await self.client.post(self.url + path, content=body, headers=headers, **kw)


def make_config(data_dir: Path, toml: str = "") -> Config:
    """A test configuration: the given TOML, loopback port 0, a known token."""
    token_file = data_dir / "tokens"
    if not token_file.exists():
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
    config = decode_config(toml.encode(), "test.toml")
    return msgspec.structs.replace(
        config,
        data_dir=str(data_dir),
        server=msgspec.structs.replace(config.server, listen=["127.0.0.1:0"]),
        # Port 0: tests run side by side; the default 8081 would collide.
        admin=msgspec.structs.replace(
            config.admin,
            listen=["127.0.0.1:0"]
            if config.admin.listen == ["127.0.0.1:8081"]
            else config.admin.listen,
        ),
        tokens=msgspec.structs.replace(
            config.tokens, files=config.tokens.files or [str(token_file)]
        ),
    )


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(data_dir: Path) -> AsyncIterator[StartServer]:
    """Start the real service (hypercorn on trio) with a config; cancelled at teardown."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:

        async def start(toml: str = "") -> Server:
            config = make_config(data_dir, toml)
            announced: list[str] = []
            running = await nursery.start(partial(serve, config, announce=announced.append))
            return Server(running.binds[0], TOKEN, data_dir, client, announced, running)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    result: Server = await start_server()
    return result
