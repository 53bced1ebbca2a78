"""Which events a sink takes (sans-IO: no trio, no sqlite3, no clock).

A sink has zero or more filters; an event is routed to the sink when it
matches any of them (no filter: every event). Inside one filter every field
that is set must match, and a field set to a list matches any of its items.
``types`` are shell-style globs (``com.adobe.platform.marketo.activity.*``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class EventFields(Protocol):
    """The columns of a journaled event that filters look at."""

    @property
    def stream(self) -> str: ...
    @property
    def type(self) -> str | None: ...
    @property
    def munchkin_id(self) -> str | None: ...
    @property
    def activity_type_id(self) -> int | None: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Filter:
    """One conjunction of conditions; an empty tuple means "any"."""

    streams: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    munchkin_ids: tuple[str, ...] = ()
    activity_type_ids: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()

    def matches(self, event: EventFields, type_pattern: re.Pattern[str] | None) -> bool:
        """True when every condition that is set holds for ``event``."""
        if self.streams and event.stream not in self.streams:
            return False
        if self.sources and event.source not in self.sources:
            return False
        if self.munchkin_ids and event.munchkin_id not in self.munchkin_ids:
            return False
        if self.activity_type_ids and event.activity_type_id not in self.activity_type_ids:
            return False
        if type_pattern is not None:
            return event.type is not None and type_pattern.fullmatch(event.type) is not None
        return True


class Route:
    """A sink's filters, compiled once; :meth:`matches` is called for every event read."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = tuple(filters)
        # One regex per filter: fnmatch would re-translate every glob for every event.
        self._patterns = [
            re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in f.types))
            if f.types
            else None
            for f in self.filters
        ]

    @property
    def everything(self) -> bool:
        """True when the route takes every event."""
        return not self.filters

    def matches(self, event: EventFields) -> bool:
        """True when ``event`` matches any filter (or there are none)."""
        if not self.filters:
            return True
        return any(
            f.matches(event, pattern)
            for f, pattern in zip(self.filters, self._patterns, strict=True)
        )
