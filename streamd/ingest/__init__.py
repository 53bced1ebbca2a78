"""The HTTP side: the ASGI app that turns deliveries into journaled batches."""

from streamd.ingest.app import IngestApp, Limits, Source

__all__ = ["IngestApp", "Limits", "Source"]
