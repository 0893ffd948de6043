"""The one way the tests, scripts and benchmarks pick a port for a server they start on
loopback (S3, the Spark standalone cluster, the online scoring server)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
