"""Length-prefixed msgpack frames between streamd's processes (sans-IO).

A frame is a 4-byte big-endian length and a msgspec msgpack message. The ingest workers
(:mod:`streamd.ingest.ipc`) and the kafka sink's producer process
(:mod:`streamd.drain.sinks._kafka_wire`) speak it: here, below both, so neither imports
the other.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """Raised when the other process sent a frame that is not a valid message."""


class FrameReader:
    """Splits a byte stream into frames and decodes them (sans-IO).

    Received chunks are joined once a whole frame is there (each byte is copied at
    most twice, whatever the frame's size), and each message is decoded from a view
    of the joined bytes.
    """

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any], limit: int) -> None:
        self._decoder = decoder
        self._limit = limit
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._size = 0  # bytes received and not yet decoded
        self._need = 0  # the current frame's size with its header; 0: header not read

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return every message now complete.

        Raises :class:`ProtocolError` on an oversized frame or an undecodable message.
        """
        if data:
            self._chunks.append(data)
            self._size += len(data)
        out = []
        while True:
            if not self._need:
                if self._size < 4:
                    break
                self._gather(4)
                (size,) = HEADER.unpack_from(self._buf, self._pos)
                if size > self._limit:
                    raise ProtocolError(
                        f"a frame of {size} bytes is over the limit of {self._limit}"
                    )
                self._need = 4 + size
            need = self._need
            if self._size < need:
                break
            self._gather(need)
            start = self._pos
            try:
                out.append(self._decoder.decode(memoryview(self._buf)[start + 4 : start + need]))
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"undecodable message: {exc}") from None
            self._pos = start + need
            self._size -= need
            self._need = 0
        return out

    def _gather(self, n: int) -> None:
        """Make ``_buf[_pos:]`` hold at least ``n`` bytes (all received, joined)."""
        if len(self._buf) - self._pos >= n:
            return
        parts = [self._buf[self._pos :]] if self._pos < len(self._buf) else []
        parts += self._chunks
        self._chunks = []
        self._buf = b"".join(parts)
        self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._size


__all__ = ["HEADER", "FrameReader", "ProtocolError"]
