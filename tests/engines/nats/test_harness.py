"""The test cluster itself: a port taken between being picked and being bound."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import time

import pytest

from tests.engines._nats import NatsCluster


def test_a_port_taken_before_the_node_binds_it_is_picked_again() -> None:
    cluster = NatsCluster(nodes=1)  # ports picked, nothing started
    try:
        taken = cluster.ports[0]
        # Bound, not listening: the node cannot bind it, and the readiness probe's
        # connection is refused at once. (A listener that never answers left nats-py's
        # transport to be collected in a later test: an unraisable ResourceWarning
        # failed test_two_sinks_creating_the_stream_at_once in a full run.)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", taken))
            cluster.start(timeout=20)
            assert cluster.ports[0] != taken
            assert "address already in use" in cluster.log_tail(0, lines=200)
        assert cluster.running() == [0]
    finally:
        cluster.close()
    gc.collect()  # anything the probes leaked warns here, in this test


def test_a_node_that_exits_while_being_probed_is_reported_at_once() -> None:
    """The readiness probe of a node whose port refuses tries once per pass: a node that
    exits meanwhile is reported as exited, not after the whole timeout."""
    cluster = NatsCluster(nodes=1)
    try:
        # Stands in for a node that dies at start-up: alive for the first probes, its
        # port refusing (nothing listens), then gone.
        cluster._procs[0] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="nats node 0 exited"):
            cluster.wait_ready(timeout=15)
        assert time.monotonic() - started < 10
    finally:
        cluster.close()


def test_a_probe_of_a_node_that_never_says_info_closes_its_socket() -> None:
    """A node that accepts and has not sent INFO yet (starting): the probe's connect
    times out and its socket is closed by the harness, not left to the garbage collector
    (whose warning then failed an unrelated test in a CI run)."""
    import asyncio

    from tests.engines._nats import _connect

    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        gc.disable()  # only the harness's own close may end the connection
        try:
            with pytest.raises(TimeoutError):
                asyncio.run(_connect(url, connect_timeout=0.3, allow_reconnect=False))
            silent.settimeout(5)
            conn, _ = silent.accept()
            with conn:
                conn.settimeout(5)
                assert conn.recv(100) == b""  # end of stream: closed, nothing sent
        finally:
            gc.enable()
