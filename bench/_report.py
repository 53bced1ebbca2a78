"""The markdown table ``bench.ingest`` prints from its case results."""

from __future__ import annotations

from typing import Any, Final

# Cores used by other processes during a case above which its figures are suspect.
CONTAMINATED: Final = 0.1


def _fmt(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def table_row(entry: dict[str, Any]) -> list[str]:
    """One markdown table row for a case result."""
    name = entry["case"]["name"]
    if "error" in entry:
        return [name, "error", "", "", "", "", "", "", "", entry["error"][:60]]
    other = entry.get("other_cores", 0)
    other_note = [f"other load {other:.2f} cores"] if other >= CONTAMINATED else []
    if "sqlite" in entry:
        q = entry["sqlite"]
        tx = f"{_fmt(q['tx_per_s'])} tx/s"
        return [name, _fmt(q["events_per_s"]), tx, *[""] * 6, ", ".join(other_note)]
    load, server = entry["load"], entry["server"]
    lat = load["latency_ms"] or {}
    notes = [f"{k}x{v}" for k, v in load["errors"].items()]
    if server["exit_code"] != 0:
        notes.append(f"server exit {server['exit_code']}")
    for key in ("failed_batches", "abandoned_batches"):
        if load[key]:
            notes.append(f"{key.split('_')[0]} {load[key]}")
    if load["duplicates"]:
        notes.append(f"dup {load['duplicates']}")
    if load["inline_batches"]:
        notes.append(f"inline {load['inline_batches']}")
    notes += other_note
    if load["latency_from_schedule_ms"]:
        notes.append(f"p99 from schedule {load['latency_from_schedule_ms']['p99']:.1f} ms")
    client_cores = load["client_cpu_s"] / load["duration_s"]
    return [
        name,
        _fmt(load["events_per_s"]),
        _fmt(load["batches_per_s"]),
        _fmt(lat.get("p50"), 1),
        _fmt(lat.get("p99"), 1),
        _fmt(lat.get("max"), 1),
        _fmt(server["cores_used"], 2),
        _fmt(client_cores, 2),
        _fmt(server["peak_rss_mib"]),
        ", ".join(notes),
    ]


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    head = [
        "case",
        "events/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server cores",
        "client cores",
        "server peak RSS MiB",
        "notes",
    ]
    rows = [head, ["---"] * len(head), *(table_row(e) for e in entries)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)
