"""The ``postgres`` sink: one table that every receiver's events land in once per key.

(Settings only so far: the sink itself is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    dsn: str  # libpq connection string or URI, without the password
    password: str | None = None  # from postgres.password_file
    table: str = "streamd_events"  # may be schema-qualified: "marketing.events"
    manage_table: bool = True  # create or migrate it; False: check it and refuse a wrong one
    instance: str = ""  # this receiver's name, recorded with each row it inserts
    connect_timeout: float = 10.0
    sink: str = ""  # the sink's name, for messages
