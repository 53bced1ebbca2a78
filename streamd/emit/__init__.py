"""``streamd emit``: an emulator of Marketo's senders, and what the benchmarks send.

- :mod:`~streamd.emit.generate`: deterministic events in every documented shape;
- :mod:`~streamd.emit.schedule`: the senders' retry rules, sans-IO;
- :mod:`~streamd.emit.legacy`, :mod:`~streamd.emit.adobe_io`: the two senders;
- :mod:`~streamd.emit.sender`: runs them (stop conditions, drain, signals, key server);
- :mod:`~streamd.emit.verify`: is every acknowledged id journaled exactly once;
- :mod:`~streamd.emit.journal_api`: a generated Journaling API server.
"""

from streamd.emit.accounting import Ledger, format_summary
from streamd.emit.errors import EmitError, UsageError
from streamd.emit.generate import BatchMaker, Generated, iter_batches
from streamd.emit.journal_api import JournalApi
from streamd.emit.schedule import Decision, IoDelivery, IoPolicy, LegacyDelivery, LegacyPolicy
from streamd.emit.sender import EmitOptions, OAuthSettings, run_emit
from streamd.emit.verify import Verdict, verify

__all__ = [
    "BatchMaker",
    "Decision",
    "EmitError",
    "EmitOptions",
    "Generated",
    "IoDelivery",
    "IoPolicy",
    "JournalApi",
    "Ledger",
    "LegacyDelivery",
    "LegacyPolicy",
    "OAuthSettings",
    "UsageError",
    "Verdict",
    "format_summary",
    "iter_batches",
    "run_emit",
    "verify",
]
