"""Commands that change a running daemon go through its admin listener.

Used by ``streamd sinks``, ``streamd dlq`` and ``streamd journal pull-reset``: when a
daemon holds the journal's writer lock, they POST to its admin listener instead of
writing the journal themselves.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from streamd.auth import read_token_file
from streamd.errors import ConfigError, StreamdError
from streamd.service.config import default_data_dir, load_config, parse_listen


def admin_flags(parser: argparse.ArgumentParser) -> None:
    """Where a running daemon's admin listener is (for the commands that change things)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("STREAMD_CONFIG"),
        help="the daemon's configuration, for its data directory and admin listener "
        "(default: $STREAMD_CONFIG)",
    )
    parser.add_argument(
        "--admin-url",
        metavar="URL",
        help="the running daemon's admin listener (default: from the configuration, "
        "http://127.0.0.1:8081)",
    )


def named_journal(args: argparse.Namespace) -> str:
    """The journal a command names: ``--journal``, else ``--data-dir``, else the
    ``--config``'s data directory, else the default one."""
    if args.journal:
        return str(args.journal)
    if args.data_dir:
        return os.path.join(args.data_dir, "journal.db")
    if getattr(args, "config", None):
        return load_config(args.config).journal_path
    return os.path.join(default_data_dir(), "journal.db")


def daemon_running(path: str) -> bool:
    """True when a streamd process holds the journal's writer lock."""
    from streamd.journal.writer import writer_lock_held

    return writer_lock_held(path)


def journal_id_of(path: str) -> str | None:
    """The id of the journal at ``path`` (read-only), or None when it cannot be read."""
    import sqlite3

    from streamd.journal.schema import sqlite_uri

    try:
        conn = sqlite3.connect(sqlite_uri(path), uri=True)
    except (sqlite3.Error, OSError, ValueError):
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def admin_call(
    args: argparse.Namespace, route: str, body: dict[str, Any], journal: str
) -> dict[str, Any]:
    """POST ``body`` to the running daemon's admin listener; its JSON answer.

    ``journal`` is the journal the command named: its id goes along, and a daemon that
    writes another journal refuses (409) instead of acting on the wrong one. Raises
    :class:`StreamdError` with the daemon's message when it refuses.
    """
    import httpx

    config = load_config(args.config, data_dir=args.data_dir)
    url = args.admin_url
    if url is None:
        if not config.admin.addresses:
            raise StreamdError(
                "streamd is running on this journal and its admin listener is off "
                "(admin.listen); stop streamd to make this change offline"
            )
        host, port = parse_listen(config.admin.addresses[0])
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        tokens = read_token_file(config.admin_token_file)
    except ConfigError as exc:
        raise StreamdError(
            "streamd is running on this journal; stop it first, or give the daemon's "
            f"--config so its admin listener can be used ({exc})"
        ) from None
    named = journal_id_of(journal)
    try:
        with httpx.Client(timeout=30) as client:
            reply = client.post(
                url.rstrip("/") + route,
                content=orjson.dumps(body),
                headers={
                    "Authorization": f"Bearer {tokens[0]}",
                    **({"X-Streamd-Journal-Id": named} if named else {}),
                },
            )
    except httpx.HTTPError as exc:
        raise StreamdError(
            f"streamd is running on this journal, but its admin listener at {url} did not "
            f"answer ({type(exc).__name__}); is --admin-url right?"
        ) from None
    try:
        answer = reply.json()
    except ValueError:
        answer = {"error": reply.text[:200]}
    if reply.status_code != 200:
        raise StreamdError(f"{answer.get('error', reply.reason_phrase)} (HTTP {reply.status_code})")
    assert isinstance(answer, dict)
    return answer
