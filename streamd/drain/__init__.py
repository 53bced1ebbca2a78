"""The drain: deliver journaled events to the customer's systems, at least once.

One bounded pool per sink (:mod:`streamd.drain.runner`), the engine that runs
them and saves their state through the journal writer
(:mod:`streamd.drain.engine`), sans-IO routing and retry policy
(:mod:`streamd.drain.routing`, :mod:`streamd.drain.policy`), the sinks
(:mod:`streamd.drain.sinks`). Operator actions are :mod:`streamd.ops`' operations:
:meth:`Drain.run` applies one to a running sink.
"""

from streamd.drain.engine import (
    Drain,
    DrainError,
    RunnerStatistics,
    SinkOperation,
    SinkStatus,
    open_drain,
)
from streamd.drain.policy import Kind, RetrySettings
from streamd.drain.pressure import YieldSettings
from streamd.drain.routing import Filter, Route
from streamd.drain.runner import SinkSpec
from streamd.drain.sinks.base import DrainEvent, Result, Sink

__all__ = [
    "Drain",
    "DrainError",
    "DrainEvent",
    "Filter",
    "Kind",
    "Result",
    "RetrySettings",
    "Route",
    "RunnerStatistics",
    "Sink",
    "SinkOperation",
    "SinkSpec",
    "SinkStatus",
    "YieldSettings",
    "open_drain",
]
