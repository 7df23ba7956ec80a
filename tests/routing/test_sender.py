"""The sender's own check of a stored server URL in production, at every attempt: a record stored
under older rules (plain http, a private host) is never sent to, however often it is retried."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from routing import http1, signing
from routing.registry import Target
from routing.sender import Sender

SECRET = signing.new_secret()
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class _Server:
    """A loopback server answering 200 to every request; counts the connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.readuntil(b"}")  # the bodies sent below are JSON objects
                writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    made = _Server()
    listener = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    made.port = listener.sockets[0].getsockname()[1]
    try:
        yield made
    finally:
        listener.close()


def _refused() -> float:
    return REGISTRY.get_sample_value("ally_deliveries_total", {"outcome": "refused_url"}) or 0.0


async def test_a_stored_url_production_no_longer_allows_is_refused_at_every_attempt(server: _Server):
    # The client here connects anywhere (production=False), so only the sender's URL check stands
    # between the attempt and the server.
    client = http1.Client(production=False, tls=ssl.create_default_context())
    stored = [
        Target(f"http://127.0.0.1:{server.port}", (SECRET,)),
        Target(f"http://localhost:{server.port}/ally", (SECRET,)),
    ]
    try:
        guarded = Sender(client, timeout=5, production=True)
        before = _refused()
        for attempt in range(3):
            for target in stored:
                outcome = await guarded.send(f"txn_{attempt}", b"{}", target)
                assert (outcome.ok, outcome.status) == (False, None)
        assert server.connections == 0
        assert _refused() - before == 3 * len(stored), "each refused attempt is counted, cached or not"
        # The control: the same URL outside production is sent to.
        outcome = await Sender(client, timeout=5, production=False).send("txn_9", b"{}", stored[0])
        assert (outcome.ok, outcome.status) == (True, 200)
        assert server.connections == 1
    finally:
        await client.close()
