"""The ``kafka`` sink: events produced idempotently with acks=all.

(Settings only so far: the sink itself is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: tuple[str, ...]
    topic: str = "streamd.{stream}"  # {stream} {type} {source} {munchkin_id}
    key: str = "event"  # "event": the event key; "lead": the lead id (else the event key)
    properties: dict[str, str] = field(default_factory=dict)  # more librdkafka settings
    password: str | None = None  # sasl.password, from kafka.password_file
    instance: str = ""
    timeout: float = 20.0  # the pool's timeout: one batch's delivery reports
    sink: str = ""
