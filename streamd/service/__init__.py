"""The daemon: configuration, the root nursery, signals, hypercorn."""

from streamd.service.config import Config, load_config
from streamd.service.run import serve

__all__ = ["Config", "load_config", "serve"]
