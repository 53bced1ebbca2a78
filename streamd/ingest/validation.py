"""Opt-in automatic confirmation of an Adobe ``validationUrl``.

When the GET challenge cannot be answered, Adobe POSTs ``{"validationUrl":
...}`` and someone must GET that URL within 5 minutes. A body names the URL,
so streamd only ever opens ``https`` URLs on the configured validation hosts
(Adobe's, by default), without credentials, without following redirects,
with a timeout, and a few at a time; anything else is logged for the
operator to open by hand.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio

log = logging.getLogger("streamd.ingest.validation")

MAX_CONCURRENT = 4
TIMEOUT = 10.0


@dataclass
class Validator:
    """Opens allowed validation URLs in the background (see the module docstring)."""

    hosts: tuple[str, ...]
    ca_file: str = ""
    opened: list[tuple[str, int | str]] = field(default_factory=list)  # (url, status or error)
    _busy: int = 0
    _nursery: trio.Nursery | None = None

    def run_in(self, nursery: trio.Nursery | None) -> None:
        """Open URLs as tasks of ``nursery`` from now on (None: the app stopped hosting
        background work; URLs are then logged for the operator to open)."""
        self._nursery = nursery

    def allowed(self, url: str) -> str | None:
        """Why ``url`` may not be opened, or None when it may."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "not a URL"
        if parts.scheme != "https":
            return "not https"
        if parts.username is not None or parts.password is not None:
            return "carries credentials"
        host = (parts.hostname or "").lower()
        where = host if port is None else f"{host}:{port}"
        if where not in self.hosts:
            return f"host {where!r} is not one of validation_hosts"
        return None

    def start(self, source: str, url: str) -> bool:
        """Open ``url`` in the background if allowed; False (and a log line) otherwise."""
        problem = self.allowed(url)
        if problem is not None:
            log.warning(
                "source %s: not opening the validationUrl %r (%s); open it by hand within "
                "5 minutes to confirm the registration",
                source,
                url,
                problem,
            )
            return False
        if self._nursery is None or self._busy >= MAX_CONCURRENT:
            log.warning(
                "source %s: too many validations at once; open %r by hand within 5 minutes",
                source,
                url,
            )
            return False
        self._busy += 1
        self._nursery.start_soon(self._open, source, url)
        return True

    async def _open(self, source: str, url: str) -> None:
        # Imported here: a process opens a validationUrl only when a source has
        # auto_validate and Adobe sends a challenge (ARCHITECTURE.md, "What a process
        # imports").
        import httpx

        try:
            verify: ssl.SSLContext | bool = True
            if self.ca_file:
                verify = ssl.create_default_context(cafile=self.ca_file)
            async with httpx.AsyncClient(
                timeout=TIMEOUT, follow_redirects=False, verify=verify
            ) as client:
                reply = await client.get(url)
            self.opened.append((url, reply.status_code))
            if 200 <= reply.status_code < 300:
                log.warning(
                    "source %s: validationUrl confirmed (HTTP %d)", source, reply.status_code
                )
            else:
                log.error(
                    "source %s: the validationUrl answered HTTP %d; open %r by hand",
                    source,
                    reply.status_code,
                    url,
                )
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            self.opened.append((url, type(exc).__name__))
            log.error(
                "source %s: cannot open the validationUrl (%s); open %r by hand within 5 minutes",
                source,
                type(exc).__name__,
                url,
            )
        finally:
            self._busy -= 1
