"""bench.drain's end-to-end latency: each event's arrival minus its batch's send start."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.drain import end_to_end


def test_the_join_measures_from_the_first_attempt_and_counts_the_missing(tmp_path: Path) -> None:
    starts, arrivals = tmp_path / "starts.jsonl", tmp_path / "arrivals.json"
    starts.write_bytes(
        orjson.dumps([100.0, ["a", "b"]]) + b"\n" + orjson.dumps([101.0, ["c", "lost"]]) + b"\n"
    )
    arrivals.write_bytes(orjson.dumps({"a": 100.010, "b": 100.020, "c": 101.5, "x": 1.0}))
    result = end_to_end(starts, arrivals)
    assert result["n"] == 3 and result["sent_not_received"] == 1
    assert result["p50_ms"] == 20.0 and result["max_ms"] == 500.0
