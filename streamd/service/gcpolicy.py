"""The cyclic garbage collector's settings for a serving process.

CPython starts a young-generation pass every 700 container objects allocated and not
yet freed, and a full pass over every tracked object (hypercorn's, trio's, msgspec's,
streamd's own modules and tables: most of them made at start and never freed) about
every hundred of those. Under small deliveries that was 30 to 40 µs of CPU a request,
with a full pass every second or so holding the GIL for ~20 ms (ARCHITECTURE.md,
"The garbage collector's settings").

A serving process therefore (1) moves what exists once it is set up into the
permanent generation (``gc.freeze``): no pass walks it again; a cycle among those
objects that becomes garbage later (a reload's old settings) is not collected, and
stays bounded by the reloads an operator makes; (2) starts a young pass every
:data:`YOUNG` objects: most of a request's objects are freed by reference counting
before any pass sees them, so a pass costs about what is alive then (the requests in
flight), not what was allocated since the last one.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # container objects allocated and not freed before a young pass


def tune() -> None:
    """Apply the serving settings (once set up, before serving)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
    gc.collect()
    gc.freeze()
