"""Log lines: JSON off a terminal, text on one, journald priorities, extra fields."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.service.logs import configure_logging, stream_is_journald


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _emit(stream: io.StringIO | io.TextIOWrapper) -> None:
    log = logging.getLogger("streamd.test")
    log.info("delivered %d events", 3, extra={"source": "legacy", "accepted": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed on %r", "a\nforged line")


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_off_a_terminal() -> None:
    out = io.StringIO()  # not a TTY
    configure_logging("info", "auto", stream=out, environ={})
    _emit(out)
    lines = out.getvalue().splitlines()
    first = json.loads(lines[0])
    assert first["level"] == "info" and first["logger"] == "streamd.test"
    assert first["msg"] == "delivered 3 events"
    assert (first["source"], first["accepted"]) == ("legacy", 3)
    assert first["ts"].endswith("+00:00")
    second = json.loads(lines[1])  # the traceback stays inside one line
    assert len(lines) == 2
    assert second["level"] == "error"
    assert second["msg"] == "failed on 'a\\nforged line'"
    assert "ValueError: boom" in second["exc"]


@pytest.mark.usefixtures("restore_root_logger")
def test_text_when_asked_and_debug_filtered_by_level() -> None:
    out = io.StringIO()
    configure_logging("warning", "text", stream=out, environ={})
    logging.getLogger("streamd.test").info("not shown")
    logging.getLogger("streamd.test").warning("shown")
    text = out.getvalue()
    assert "not shown" not in text
    assert text.rstrip().endswith("WARNING streamd.test: shown")


@pytest.mark.usefixtures("restore_root_logger")
def test_journald_gets_priorities(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w+") as out:
        st = os.fstat(out.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journald(out, env)
        configure_logging("debug", "json", stream=out, environ=env)
        _emit(out)
        log = logging.getLogger("streamd.test")
        log.warning("w")
        log.debug("d")
        out.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<3>", "<4>", "<7>"]
    assert json.loads(lines[0][3:])["msg"] == "delivered 3 events"


@pytest.mark.usefixtures("restore_root_logger")
def test_journald_text_prefixes_every_traceback_line(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w+") as out:
        st = os.fstat(out.fileno())
        configure_logging(
            "info", "text", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        )
        _emit(out)
        out.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[0] == "<6>INFO streamd.test: delivered 3 events"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[1:])


def test_another_stream_is_not_journald(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(b.fileno())
        assert not stream_is_journald(a, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journald(a, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journald(a, {})


@pytest.mark.usefixtures("restore_root_logger")
def test_httpx_request_lines_are_left_out_at_info() -> None:
    # httpx logs each request at INFO: one line per batch an http sink delivers.
    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    try:
        out = io.StringIO()
        configure_logging("info", "text", stream=out, environ={})
        httpx_log.info('HTTP Request: POST http://127.0.0.1:9/hook "HTTP/1.1 200 OK"')
        httpx_log.warning("a warning of httpx")
        logging.getLogger("streamd.test").info("ours")
        text = out.getvalue()
        assert "HTTP Request" not in text
        assert "a warning of httpx" in text and "ours" in text
    finally:
        httpx_log.setLevel(level)
