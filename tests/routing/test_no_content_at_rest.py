"""Contract §0.1: no readable message content at rest. A unique marker handed over while the
server is down (so it sits in the queue and in a retried transaction) is found in no
Redis key or value under the gateway's prefix, and in no log line."""

from __future__ import annotations

import logging
import uuid

import pytest

from foundation.logs import JsonFormatter
from foundation.types import Event
from routing.handoff import Item
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.redisdump import everything_under, forms


async def test_a_marker_sent_while_the_server_is_down_is_nowhere_in_redis_or_the_logs(
    gateway: Gateway, dedicated: DedicatedServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    marker = f"marker-{uuid.uuid4().hex}"
    await gateway.create_user(dedicated, "private")
    dedicated.mode["private"] = "error"
    payload = {"update_id": 1, "message": {"text": f"my secret is {marker}", "caption": marker}}
    assert await gateway.services.handoff("private", [Item(Event("telegram.update", "telegram", payload), "1")]) == 1
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 2, timeout=10)  # queued, in flight, retried

    stored = await everything_under(gateway.services.redis, gateway.settings.key_prefix)
    assert any(b":q" in item for item in stored), "the queue itself was inspected"
    assert any(b'"sealed"' in item for item in stored), "the transaction body was inspected"
    for form in forms(marker):
        assert not [item for item in stored if form in item]

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any("delivery refused" in line for line in lines), "the failing attempts were logged"
    for form in forms(marker):
        assert not [line for line in lines if form.decode() in line]

    # The server, and only the server, can read it.
    dedicated.mode["private"] = "ok"
    await dedicated.wait_for(lambda: len(dedicated.events("private")) == 1, timeout=10)
    assert marker in dedicated.events("private")[0]["payload"]["message"]["text"]
