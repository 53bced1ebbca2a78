"""The daemon: configuration, the root nursery, signals, hypercorn."""

from typing import TYPE_CHECKING, Any

from streamd.service.config import Config, load_config

if TYPE_CHECKING:
    from streamd.service.run import Running, serve


def __getattr__(name: str) -> Any:
    # The service pulls in hypercorn, the drain and prometheus; commands that only
    # read the configuration (journal inspection, sinks offline) do not need them.
    if name in ("Running", "serve"):
        from streamd.service import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Config", "Running", "load_config", "serve"]
