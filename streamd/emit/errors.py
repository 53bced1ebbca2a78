"""Errors of the emulator, under streamd's one hierarchy.

A bad flag or input file raises streamd's own :class:`~streamd.errors.UsageError`
(re-exported here): one class, so ``streamd`` and ``streamd emit`` report it alike
(exit status 2), whichever layer raised it.
"""

from __future__ import annotations

from streamd.errors import StreamdError, UsageError


class EmitError(StreamdError):
    """Raised when the emulator cannot do what it was asked (bad target, failed handshake)."""


__all__ = ["EmitError", "UsageError"]
