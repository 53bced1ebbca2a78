"""The daemon: configuration, the root nursery, signals, hypercorn."""

from streamd.service.config import Config, load_config
from streamd.service.run import Running, serve

__all__ = ["Config", "Running", "load_config", "serve"]
