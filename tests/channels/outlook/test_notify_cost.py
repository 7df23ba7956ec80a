"""An unauthenticated `POST /outlook/notify` costs a bounded amount of Redis work (contract §9.3)."""

from __future__ import annotations

import uuid
from typing import Any

from channels.outlook.ingress import MAX_ITEMS
from tests.support.commandstats import commands_run
from tests.support.mail import GatewayFactory
from tests.support.redis_servers import RedisServer


def forged(n: int) -> list[dict[str, Any]]:
    """Notifications an outsider can send: each names a different, unknown subscription."""
    return [
        {
            "subscriptionId": str(uuid.uuid4()),
            "clientState": "guess",
            "changeType": "created",
            "resource": f"Users/x/Messages/{i}",
        }
        for i in range(n)
    ]


async def test_a_notification_over_the_item_cap_is_413_before_any_redis_work(
    start_gateway: GatewayFactory, own_redis: RedisServer
):
    gw = await start_gateway(role="web", redis_url=own_redis.url)
    before = await commands_run(gw.services.redis)
    resp = await gw.client.post("/outlook/notify", json={"value": forged(MAX_ITEMS + 1)})
    assert resp.status == 413
    assert (await resp.json())["error"] == "too_many_notifications"
    assert await commands_run(gw.services.redis) == before


async def test_unknown_subscriptions_cost_one_lookup_each_and_queue_nothing(
    start_gateway: GatewayFactory, own_redis: RedisServer
):
    gw = await start_gateway(role="web", redis_url=own_redis.url)
    before = await commands_run(gw.services.redis)
    resp = await gw.client.post("/outlook/notify", json={"value": forged(MAX_ITEMS)})
    assert resp.status == 202
    assert await commands_run(gw.services.redis) - before <= MAX_ITEMS
    assert not [k async for k in gw.services.redis.scan_iter(match="*:q")]
