"""Destinations, one module each, behind :class:`streamd.drain.sinks.base.Sink`."""
