"""Errors of the emulator, under streamd's one hierarchy."""

from __future__ import annotations

from streamd.errors import StreamdError


class EmitError(StreamdError):
    """Raised when the emulator cannot do what it was asked (bad target, failed handshake)."""


class UsageError(EmitError):
    """Raised for a bad command-line value or an unreadable input file (exit status 2)."""
