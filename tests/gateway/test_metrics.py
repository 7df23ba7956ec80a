from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from foundation.types import Event
from routing.handoff import Item
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.metrics import scrape, value
from tests.support.waiting import eventually

METRICS_SOURCE = Path(__file__).resolve().parents[2] / "foundation" / "metrics.py"


async def test_metrics_count_events_per_channel_retries_latency_and_sample_the_queue(
    gateway: Gateway, dedicated: DedicatedServer
):
    await gateway.create_user(dedicated, "metered")
    before = await scrape(gateway)
    dedicated.mode["metered"] = "down"
    items = [Item(Event("telegram.update", "telegram", {"update_id": n}), dedup=str(n)) for n in range(3)]
    items.append(Item(Event("gmail.notification", "gmail", {"history_id": "1"}), dedup="g1"))
    await gateway.services.handoff("metered", items, dedup_scope="m")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)

    await gateway.services.worker.sweep()  # the queue gauges are what the last sweep counted
    held = await scrape(gateway)
    # Counted per event, under the event's own channel.
    for channel, expected in (("telegram", 3), ("gmail", 1)):
        key = f'ally_events_in_total{{channel="{channel}"}}'
        assert value(held, key) - value(before, key) == expected
    assert held["ally_queue_depth{}"] >= 4
    assert held["ally_queue_oldest_event_age_seconds{}"] >= 0
    assert held["ally_queue_users_scheduled{}"] >= 1

    async def retried() -> bool:
        now = await scrape(gateway)
        key = 'ally_delivery_retries_total{reason="refused"}'
        return value(now, key) > value(before, key)

    await eventually(retried)
    dedicated.mode["metered"] = "ok"
    await gateway.services.handoff.schedule("metered", now=True)
    await dedicated.wait_for(lambda: len(dedicated.events("metered")) == 4)

    async def delivered() -> bool:
        after = await scrape(gateway)
        out = 'ally_events_out_total{channel="%s"}'
        return (
            value(after, out % "telegram") - value(before, out % "telegram") == 3
            and value(after, out % "gmail") - value(before, out % "gmail") == 1
        )

    await eventually(delivered)
    after = await scrape(gateway)
    count = "ally_delivery_latency_seconds_count{}"
    assert value(after, count) > value(before, count)
    assert value(after, 'ally_deliveries_total{outcome="refused"}') > value(
        before, 'ally_deliveries_total{outcome="refused"}'
    )


async def test_every_declared_metric_is_exposed(gateway: Gateway):
    declared = set(re.findall(r'"(ally_[a-z_]+)"', METRICS_SOURCE.read_text()))
    resp = await gateway.client.get("/metrics")
    exposed = {family.name for family in text_string_to_metric_families(await resp.text())}
    # Counters are exposed without their `_total` suffix as the family name.
    assert {name.removesuffix("_total") for name in declared} <= exposed
    for needed in (
        "ally_events_in",
        "ally_events_out",
        "ally_queue_depth",
        "ally_queue_oldest_event_age_seconds",
        "ally_delivery_latency_seconds",
        "ally_delivery_retries",
        "ally_token_refreshes",
        "ally_rate_limit_waits",
        "ally_webhook_rejected",
    ):
        assert needed in exposed


async def test_an_erasure_is_counted(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "counted")
    before = value(await scrape(gateway), 'ally_erasures_total{outcome="complete"}')
    assert (await gateway.admin("DELETE", "/admin/v1/users/counted")).status == 202
    await gateway.services.eraser.wait("counted")
    assert value(await scrape(gateway), 'ally_erasures_total{outcome="complete"}') == before + 1
