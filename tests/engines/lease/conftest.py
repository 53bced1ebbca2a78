"""Child processes of the lease tests (the PostgreSQL server: tests/engines/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from tests.system._harness import Processes


def journal_server(
    processes: Processes, root: Path, *, events: int, seed: int, client_id: str
) -> tuple[int, Path]:
    """``streamd emit --journal-server`` (the project's Journaling API emulator) with
    ``events`` events, on a free loopback port; its port and client secret file, once
    its token endpoint answers."""
    from tests.system._harness import free_port, streamd_argv, wait_for

    secret = root / "secret"
    secret.write_text(f"{client_id}-secret-0123456789\n")
    port = free_port()
    emulator = processes.spawn(
        [
            *streamd_argv(), "emit", "--journal-server", "--listen", f"127.0.0.1:{port}",
            "--seed", str(seed), "--journal-events", str(events),
            "--client-id", client_id, "--client-secret-file", str(secret),
            "--journal-org-id", "ORG@AdobeOrg",
        ],
        "journal-server",
    )  # fmt: skip
    wait_for(lambda: "token endpoint ready" in emulator.stdout(), timeout=20,
             what="the journal server", context=emulator.stderr)  # fmt: skip
    return port, secret
