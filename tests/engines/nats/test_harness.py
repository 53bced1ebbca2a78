"""The test cluster itself: a port taken between being picked and being bound."""

from __future__ import annotations

import gc
import socket

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
