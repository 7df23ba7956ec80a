"""`/metrics` (contract §9.3): a bearer in production, and a scrape costs no Redis work per user."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.types import Event
from routing.handoff import Item
from tests.support.commandstats import commands_run
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings, serve
from tests.support.metrics import value
from tests.support.redis_servers import RedisServer

METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
async def production(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(
        tmp_path, env="production", public_url="https://gateway.example", metrics_token=METRICS_TOKEN
    )
    settings = dataclasses.replace(settings, allowed_return_origins=("https://gateway.example",))
    async with serve(settings) as gw:
        yield gw


async def test_metrics_in_production_need_the_metrics_or_the_admin_token(production: Gateway):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {METRICS_TOKEN}"}):
        resp = await production.client.get("/metrics", headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"] == "unauthorized" and "ally_" not in await resp.text()
    for token in (METRICS_TOKEN, production.settings.admin_token):
        resp = await production.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        assert "ally_events_in_total" in await resp.text()


async def test_a_scrape_costs_the_same_few_commands_however_many_users_wait(
    tmp_path: Path, own_redis: RedisServer, dedicated: DedicatedServer
):
    # The web role runs no delivery worker: what the scrape costs is all that reaches this Redis.
    settings = make_settings(tmp_path, redis_url=own_redis.url)
    async with serve(settings, role="web") as gw:
        for n in range(300):
            await gw.create_user(dedicated, f"u{n}")
            event = Event("telegram.update", "telegram", {"update_id": n})
            await gw.services.handoff(f"u{n}", [Item(event, dedup=str(n))], dedup_scope="tg")
        redis = gw.services.redis
        before = await commands_run(redis)
        assert (await gw.client.get("/metrics")).status == 200
        assert await commands_run(redis) - before <= 3
        # The depth is what the delivery worker's periodic sweep counted, not a per-scrape count.
        await gw.services.worker.sweep()
        before = await commands_run(redis)
        resp = await gw.client.get("/metrics")
        assert await commands_run(redis) - before <= 3
        samples = {s.name: s.value for f in text_string_to_metric_families(await resp.text()) for s in f.samples}
        assert value(samples, "ally_queue_depth") == 300
        assert value(samples, "ally_queue_users_scheduled") == 300
