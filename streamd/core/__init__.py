"""Sans-IO core: wire types, shape detection, normalisation. No trio, sqlite3, sockets or clock."""

from streamd.core.event_types import DOCUMENTED_TYPES, unmatched_type_glob
from streamd.core.normalise import decode_delivery, key_hash, legacy_type, stream_of
from streamd.core.timeparse import format_utc, normalise_timestamp, parse_timestamp
from streamd.core.wire import Delivery, EventRecord

__all__ = [
    "DOCUMENTED_TYPES",
    "Delivery",
    "EventRecord",
    "decode_delivery",
    "format_utc",
    "key_hash",
    "legacy_type",
    "normalise_timestamp",
    "parse_timestamp",
    "stream_of",
    "unmatched_type_glob",
]
