"""Sans-IO core: wire types, shape detection, normalisation. No trio, sqlite3, sockets or clock."""

from streamd.core.backoff import backoff_delay
from streamd.core.event_types import DOCUMENTED_TYPES, unmatched_type_glob
from streamd.core.normalise import decode_delivery, key_hash, legacy_type, stream_of
from streamd.core.timeparse import (
    WHEN_FORMS,
    TimeError,
    format_utc,
    normalise_timestamp,
    parse_timestamp,
    parse_when,
)
from streamd.core.wire import Delivery, EventRecord

__all__ = [
    "DOCUMENTED_TYPES",
    "WHEN_FORMS",
    "Delivery",
    "EventRecord",
    "TimeError",
    "backoff_delay",
    "decode_delivery",
    "format_utc",
    "key_hash",
    "legacy_type",
    "normalise_timestamp",
    "parse_timestamp",
    "parse_when",
    "stream_of",
    "unmatched_type_glob",
]
