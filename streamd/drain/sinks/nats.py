"""The ``nats`` sink: events published to a JetStream stream with ``Nats-Msg-Id``.

(Settings only so far: the sink itself is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...]
    stream: str = "STREAMD"
    subject: str = "streamd.{stream}.{type}"  # {stream} {type} {source} {munchkin_id}
    manage_stream: bool = True  # create the stream when missing
    duplicate_window: float = 120.0  # seconds; the stream's Nats-Msg-Id memory
    replicas: int = 1
    token: str | None = None
    credentials_file: str | None = None
    instance: str = ""
    timeout: float = 20.0
    sink: str = ""
