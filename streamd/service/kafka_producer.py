"""Entry point of a kafka sink's producer process: ``python -P -m
streamd.service.kafka_producer --ipc-fd N --sink NAME``.

The sink (streamd/drain/sinks/kafka.py) starts it; what it does is
:func:`streamd.drain.sinks.kafka_child.run`. It lives here, with the ingest worker's
entry point (streamd/service/worker.py), because it sets up logging as the daemon does
(its stderr is the daemon's).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from streamd.drain.sinks.kafka import PRODUCER_PROGRAM
from streamd.drain.sinks.kafka_child import run
from streamd.service.logs import LOG_FORMATS, configure_logging

_LEVELS = ("debug", "info", "warning", "error", "critical")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse what the sink passes, log like the daemon, serve the socketpair."""
    ap = argparse.ArgumentParser(prog=f"python -P -m {PRODUCER_PROGRAM}")
    ap.add_argument("--ipc-fd", type=int, required=True, help="the socketpair end")
    ap.add_argument("--sink", default="", help="the sink's name (shown by ps)")
    ap.add_argument("--log-level", default="info", choices=_LEVELS)
    ap.add_argument("--log-format", default="auto", choices=LOG_FORMATS)
    a = ap.parse_args(argv)
    configure_logging(a.log_level, a.log_format)
    # A terminal's Ctrl-C and a SIGHUP reach the whole process group: they are the
    # daemon's to handle (it closes the sink, and EOF ends this process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run(a.ipc_fd)


if __name__ == "__main__":
    sys.exit(main())
