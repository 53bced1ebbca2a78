"""The admin listener: an authenticated ASGI app with a small route table (pull endpoint first)."""

from streamd.admin.app import AdminApp, Handler, Request, Response, Route
from streamd.admin.journal import journal_routes

__all__ = ["AdminApp", "Handler", "Request", "Response", "Route", "journal_routes"]
