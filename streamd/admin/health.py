"""The admin listener's monitoring routes: ``GET /metrics`` (Prometheus text), and
``GET /healthz`` and ``GET /readyz`` (no token: a load balancer or systemd probes them).

The daemon hands in how to render the metrics and why it would not be ready; the
routes only serve them.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from streamd.admin.app import Request, Response, Route

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def health_routes(render: Callable[[], bytes], not_ready: Callable[[], list[str]]) -> list[Route]:
    """``/metrics`` (``render`` runs in a thread, one scrape at a time: it reads the
    journal for sink lag), ``/healthz`` and ``/readyz`` (503 with ``not_ready``'s
    reasons and ``Retry-After: 5`` while there are any)."""
    one_scrape = trio.Lock()

    async def metrics(request: Request) -> Response:
        async with one_scrape:
            body = await trio.to_thread.run_sync(render)
        return Response(200, body=body, content_type=PROMETHEUS_TEXT)

    async def healthz(request: Request) -> Response:
        return Response(200, {"status": "alive"})

    async def readyz(request: Request) -> Response:
        problems = not_ready()
        if problems:
            return Response(
                503, {"ready": False, "problems": problems}, headers=[(b"retry-after", b"5")]
            )
        return Response(200, {"ready": True})

    return [
        Route("GET", "/metrics", metrics),
        Route("GET", "/healthz", healthz, public=True),
        Route("GET", "/readyz", readyz, public=True),
    ]
