"""``streamd emit``: an emulator of Marketo's senders, and what the benchmarks send.

- :mod:`~streamd.emit.generate`: deterministic events in every documented shape;
- :mod:`~streamd.emit.schedule`: the senders' retry rules, sans-IO;
- :mod:`~streamd.emit.legacy`, :mod:`~streamd.emit.adobe_io`: the two senders;
- :mod:`~streamd.emit.sender`: runs them (stop conditions, drain, signals, key server);
- :mod:`~streamd.emit.verify`: is every acknowledged id journaled exactly once;
- :mod:`~streamd.emit.journal_api`: a generated Journaling API server.

Import what you use from its module: this package imports nothing itself, so that
``streamd journal ...`` (whose argument parser knows ``emit``'s flags) does not load
trio, h11 and hypercorn to read a journal.
"""
