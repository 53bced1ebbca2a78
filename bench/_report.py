"""The markdown table ``bench.ingest`` prints from its case results, and the JSON
summary every benchmark prints (and saves with ``--out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson

# Cores used by other processes during a case above which its figures are suspect.
CONTAMINATED: Final = 0.1


def _fmt(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def table_row(entry: dict[str, Any]) -> list[str]:
    """One markdown table row for a case result."""
    name = entry["case"]["name"]
    if "error" in entry:
        return [name, "error", *[""] * 9, entry["error"][:60]]
    other = entry.get("other_cores", 0)
    other_note = [f"other load {other:.2f} cores"] if other >= CONTAMINATED else []
    if "sqlite" in entry:
        q = entry["sqlite"]
        tx = f"{_fmt(q['tx_per_s'])} tx/s"
        return [name, _fmt(q["events_per_s"]), tx, *[""] * 8, ", ".join(other_note)]
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
    if "stored" in entry:
        notes.append(f"in its database at stop: {entry['stored']['events']:,} events")
    if "logged" in entry:
        unit = entry["logged"]["unit"]
        acked = load["acked_batches"] if unit == "requests" else load["acked_events"]
        notes.append(f"in its file at stop: {entry['logged']['lines']:,} of {acked:,} acked {unit}")
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
        _fmt(server.get("cpu_s_per_1k_requests"), 3),
        _fmt(server.get("cpu_s_per_1m_events"), 0),
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
        "server CPU s / 1k requests",
        "server CPU s / 1M events",
        "client cores",
        "server peak RSS MiB",
        "notes",
    ]
    rows = [head, ["---"] * len(head), *(table_row(e) for e in entries)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


# (row label, legacy-500 case, io-20 case): the references streamd is measured against.
REFERENCES: Final = (
    ("Express reference consumer, body limit raised", "express-raised-legacy500-c16",
     "express-raised-io20-c16"),
    ("Express reference consumer, default 100 kB limit", "express-default-legacy500-c16",
     "express-default-io20-c16"),
    ("naive Python receiver (json + append)", "naive-legacy500-c16", "naive-io20-c16"),
    ("durable Node receiver (better-sqlite3, FULL, UNIQUE id)", "node-durable-legacy500-c16",
     "node-durable-io20-c16"),
    ("limit: hypercorn reading and discarding", "baseline-legacy500-c16", "baseline-io20-c16"),
    ("limit: plain SQLite appends, FULL, no index", "sqlite-full-500", "sqlite-full-20"),
    ("limit: SQLite appends + 64-bit dedup table", "sqlite-full-500-dedup-hash", None),
)  # fmt: skip


def _rate(entry: dict[str, Any] | None) -> float | None:
    if entry is None or "error" in entry:
        return None
    if "sqlite" in entry:
        return float(entry["sqlite"]["events_per_s"])
    return float(entry["load"]["events_per_s"])


def _pct(num: float | None, den: float | None) -> str:
    if num is None or den is None:
        return ""
    if den == 0:
        return "n/a (peer acked nothing)"
    return f"{num / den:.0%}"


def ratio_table(entries: list[dict[str, Any]]) -> str:
    """streamd (c16) as a share of each peer and limit, from the same run."""
    by_name = {e["case"]["name"]: e for e in entries}

    def rate(name: str | None) -> float | None:
        return _rate(by_name.get(name)) if name else None

    full_l, normal_l = rate("streamd-full-legacy500-c16"), rate("streamd-normal-legacy500-c16")
    full_i, normal_i = rate("streamd-full-io20-c16"), rate("streamd-normal-io20-c16")
    head = [
        "reference (16 connections)",
        "legacy-500 events/s",
        "streamd FULL / it",
        "streamd NORMAL / it",
        "io-20 events/s",
        "streamd FULL / it",
        "streamd NORMAL / it",
    ]
    rows = [head, ["---"] * len(head)]
    rows.append(
        ["streamd itself", _fmt(full_l), "100%", _pct(normal_l, full_l), _fmt(full_i), "100%",
         _pct(normal_i, full_i)]
    )  # fmt: skip
    for label, legacy, io in REFERENCES:
        lr, ir = rate(legacy), rate(io)
        if lr is None and ir is None:
            continue
        rows.append(
            [label, _fmt(lr), _pct(full_l, lr), _pct(normal_l, lr), _fmt(ir), _pct(full_i, ir),
             _pct(normal_i, ir)]
        )  # fmt: skip
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    emitter = rate("emit-discard-legacy500-c16")
    if emitter is not None:
        lines.append("")
        lines.append(
            f"`streamd emit` offered {_fmt(emitter)} legacy events/s to a discarding receiver"
            + (f" ({emitter / full_l:.1f}x what streamd FULL took)" if full_l else "")
        )
    return "\n".join(lines)


# (row label, case suffix): the shapes the side-by-side table compares at 16 connections.
SHAPES_C16: Final = (
    ("legacy-500", "legacy500-c16"),
    ("io-20", "io20-c16"),
    ("single CloudEvent (io-1)", "io1-c16"),
)


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None:
        return ""
    return "n/a (it acked nothing)" if den == 0 else f"{num / den:.2f}"


def _cpu_1m(entry: dict[str, Any] | None) -> float | None:
    if entry is None or "error" in entry or "server" not in entry:
        return None
    value = entry["server"].get("cpu_s_per_1m_events")
    return None if value is None else float(value)


def side_by_side(entries: list[dict[str, Any]]) -> str:
    """Per shape: streamd against hypercorn discarding and the durable Node peer, rate and
    the CPU-seconds each spent per 1,000,000 events, from the same run."""
    by_name = {e["case"]["name"]: e for e in entries}
    head = [
        "shape (16 connections)",
        "streamd FULL events/s",
        "hypercorn discarding events/s",
        "streamd FULL / hypercorn",
        "streamd NORMAL / hypercorn",
        "durable Node events/s",
        "streamd FULL / durable Node",
        "CPU s per 1M events: streamd FULL",
        "hypercorn",
        "durable Node",
    ]
    rows = [head, ["---"] * len(head)]
    for label, suffix in SHAPES_C16:
        full = by_name.get(f"streamd-full-{suffix}")
        normal = by_name.get(f"streamd-normal-{suffix}")
        base, node = by_name.get(f"baseline-{suffix}"), by_name.get(f"node-durable-{suffix}")
        if full is None and base is None and node is None:
            continue
        fr, br, nr = _rate(full), _rate(base), _rate(node)
        rows.append(
            [label, _fmt(fr), _fmt(br), _ratio(fr, br), _ratio(_rate(normal), br), _fmt(nr),
             _ratio(fr, nr), _fmt(_cpu_1m(full)), _fmt(_cpu_1m(base)), _fmt(_cpu_1m(node))]
        )  # fmt: skip
    if len(rows) == 2:
        return ""
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def print_summary(summary: dict[str, Any], out: str | None) -> None:
    """Print ``summary`` as indented JSON; also write it to ``out`` when given."""
    text = orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if out:
        Path(out).write_text(text + "\n")
