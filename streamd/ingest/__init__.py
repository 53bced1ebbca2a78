"""The HTTP side: the ASGI app that turns deliveries into journaled batches."""

from streamd.ingest.admission import Limits
from streamd.ingest.app import IngestApp, Source

__all__ = ["IngestApp", "Limits", "Source"]
