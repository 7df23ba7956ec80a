"""Free loopback ports for the servers tests start (port 0 where a server can take it itself)."""

from __future__ import annotations

import socket


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port that is free now (and, for cluster nodes, whose bus port +10000 is too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus or port + 10000 > 65535:
            if not with_bus:
                return port
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")
