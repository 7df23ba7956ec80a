"""ALLY_HOLD_TTL: events a down server does not take in time are dropped and counted."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from foundation.config import Settings
from tests.support.dedicated import DedicatedServer
from tests.support.delivery import ev, ping
from tests.support.gateway import Gateway
from tests.support.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, hold_ttl=1)


async def test_events_held_past_the_ttl_become_one_expired_event_with_the_count(
    gateway: Gateway, dedicated: DedicatedServer
):
    user = await gateway.create_user(dedicated, "away")
    dedicated.mode["away"] = "down"
    await gateway.services.handoff("away", [ev(1), ev(2), ev(3)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)
    await asyncio.sleep(2.5)  # past ALLY_HOLD_TTL, and past at least one retry that noticed it
    dedicated.mode["away"] = "ok"
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: len(dedicated.received) == 1, timeout=5)
    [expired] = dedicated.events("away")
    assert expired["type"] == "gateway.expired"
    assert expired["channel"] == "gateway"
    assert expired["payload"] == {"count": 3}
    assert await gateway.services.redis.xlen(gateway.services.keys.queue("away")) == 0
    # The expired events' bytes no longer count against the user's byte cap (once the server's
    # answer is acknowledged, which may come a moment after the server has the event).
    redis, keys = gateway.services.redis, gateway.services.keys

    async def acknowledged() -> bool:
        return not await redis.exists(keys.txn("away"))

    await eventually(acknowledged)
    assert await redis.get(keys.queue_bytes("away")) is None
    # Later events flow normally.
    await gateway.services.handoff("away", [ev(4)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.events("away")) == 2, timeout=5)
    assert dedicated.events("away")[1]["payload"]["update_id"] == 4
