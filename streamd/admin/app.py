"""The admin ASGI app: a small route table behind a bearer token.

Routes are ``(method, path) -> handler``; a handler takes a :class:`Request`
and returns a :class:`Response`. The app gets every route when it is built: the
composition root gathers each part's, e.g.::

    AdminApp(tokens, [*journal_routes(path), Route("GET", "/sinks", list_sinks)])

Order of checks: route → method → token (``Authorization: Bearer``; never in
the URL, so it stays out of logs) → body (methods that have one, bounded) →
handler. A :class:`StreamdError` becomes its ``status_hint`` with
``{"error": ...}``; anything else is logged and answered 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from streamd.asgi import ClientGone, lifespan, read_body
from streamd.auth import TokenSet
from streamd.errors import StreamdError

log = logging.getLogger("streamd.admin")

Scope = Mapping[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 1024 * 1024
JOURNAL_HEADER = b"x-streamd-journal-id"
MAX_QUERY_FIELDS = 50
_COMMON_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees of a request."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[bytes, bytes]
    base_url: str  # scheme://host[:port] as the client addressed us, for links
    body: bytes = b""


@dataclass(slots=True)
class Response:
    """What a handler answers; ``json`` is encoded unless ``body`` is given."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """One admin route."""

    method: str
    path: str
    handler: Handler
    public: bool = False  # no token needed (health checks: they reveal nothing)


class AdminApp:
    """The admin listener's ASGI application."""

    def __init__(
        self, tokens: TokenSet, routes: Iterable[Route] = (), *, journal_id: str | None = None
    ) -> None:
        """``journal_id``: the journal this daemon writes. A command that names a journal
        sends its id (JOURNAL_HEADER); another daemon's id is a 409, so an operator who
        pointed --admin-url at the wrong daemon changes nothing there.

        Raises ``ValueError`` when two routes have the same method and path.
        """
        self._tokens = tokens
        self._routes: dict[str, dict[str, Handler]] = {}
        self.journal_id = journal_id
        self._public: set[tuple[str, str]] = set()
        for route in routes:
            self._add_route(route)

    def _add_route(self, route: Route) -> None:
        methods = self._routes.setdefault(route.path.rstrip("/") or "/", {})
        if route.method in methods:
            raise ValueError(f"admin route {route.method} {route.path} is already registered")
        methods[route.method] = route.handler
        if route.public:
            self._public.add((route.method, route.path.rstrip("/") or "/"))

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every route, sorted."""
        return sorted((m, p) for p, methods in self._routes.items() for m in methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") or "/"
        methods = self._routes.get(path)
        if methods is None:
            await _send(send, Response(404, {"error": f"no admin route at {scope['path'][:200]}"}))
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(sorted(methods)).encode()
            await _send(
                send,
                Response(
                    405, {"error": f"{scope['method']} not allowed"}, headers=[(b"allow", allow)]
                ),
            )
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        public = (scope["method"], path) in self._public
        if not public and not self._tokens.check(_bearer(headers.get(b"authorization"))):
            await _send(
                send,
                Response(
                    401,
                    {"error": "missing or invalid admin token"},
                    headers=[(b"www-authenticate", b'Bearer realm="streamd-admin"')],
                ),
            )
            return
        named = headers.get(JOURNAL_HEADER)
        if named is not None and self.journal_id is not None and named != self.journal_id.encode():
            shown = named.decode("latin-1")[:64]
            await _send(
                send,
                Response(
                    409,
                    {
                        "error": f"this streamd writes journal {self.journal_id}, not the "
                        f"journal named ({shown}); give the --admin-url or --config of the "
                        "daemon that writes it"
                    },
                ),
            )
            return
        try:
            query = parse_qsl(
                scope["query_string"].decode("latin-1"),
                keep_blank_values=True,
                max_num_fields=MAX_QUERY_FIELDS,
            )
        except ValueError:
            await _send(send, Response(400, {"error": f"more than {MAX_QUERY_FIELDS} parameters"}))
            return
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                read = await read_body(receive, MAX_BODY)
            except ClientGone:
                return  # nobody to answer
            if read is None:
                await _send(send, Response(413, {"error": f"body larger than {MAX_BODY} bytes"}))
                return
            body = read
        request = Request(scope["method"], path, query, headers, _base_url(scope, headers), body)
        try:
            response = await handler(request)
        except StreamdError as exc:
            response = Response(exc.status_hint, {"error": str(exc)})
            if exc.status_hint >= 500:
                response.headers.append((b"retry-after", b"5"))
        except Exception:
            log.exception("admin route %s %s failed", scope["method"], path)
            response = Response(500, {"error": "internal error"})
        await _send(send, response)


def _bearer(value: bytes | None) -> bytes | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token else None


def _base_url(scope: Scope, headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1")
    if not host or len(host) > 255 or not all(c.isalnum() or c in ".-:[]" for c in host):
        server = scope.get("server") or ("127.0.0.1", 0)
        host = f"[{server[0]}]:{server[1]}" if ":" in str(server[0]) else f"{server[0]}:{server[1]}"
    scheme = scope.get("scheme", "http")
    return f"{scheme if scheme in ('http', 'https') else 'http'}://{host}"


async def _send(send: Send, response: Response) -> None:
    body = response.body
    if body is None:
        body = b"" if response.status == 204 else orjson.dumps(response.json)
    headers = [*_COMMON_HEADERS, *response.headers]
    if response.status != 204:
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
