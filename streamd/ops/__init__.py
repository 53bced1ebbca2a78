"""Operator actions: one typed operation each, one :class:`Operator` to run them.

Layer: above ``drain``, ``ingest`` and ``journal`` (whose stores the operations
change), below ``admin`` (which serves them) and ``cli`` (which asks for them).
"""

from streamd.ops.actions import (
    OPERATIONS,
    Count,
    DisableSink,
    DropDeadLetters,
    EnableSink,
    Operation,
    OperationRefused,
    PauseSink,
    PullRestart,
    ReplayRange,
    ResetPull,
    ResumeSink,
    RetryDeadLetters,
    RewindSink,
)
from streamd.ops.discovery import DaemonInfo, DaemonUnreachable, find_daemon
from streamd.ops.operator import OperationFailed, Operator

__all__ = [
    "OPERATIONS",
    "Count",
    "DaemonInfo",
    "DaemonUnreachable",
    "DisableSink",
    "DropDeadLetters",
    "EnableSink",
    "Operation",
    "OperationFailed",
    "OperationRefused",
    "Operator",
    "PauseSink",
    "PullRestart",
    "ReplayRange",
    "ResetPull",
    "ResumeSink",
    "RetryDeadLetters",
    "RewindSink",
    "find_daemon",
]
