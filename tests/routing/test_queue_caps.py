"""ALLY_QUEUE_MAX_EVENTS / ALLY_QUEUE_MAX_BYTES (contract §9.2): a user whose server is away fills
their own queue only; what is kept is the oldest, in order, and the drops are reported once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from foundation.config import Settings
from tests.support.dedicated import DedicatedServer
from tests.support.delivery import ev, ping
from tests.support.gateway import Gateway
from tests.support.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, queue_max_events=3, queue_max_bytes=4096)


def parsed(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def kinds(server: DedicatedServer, user_id: str) -> list[Any]:
    return [e["payload"].get("update_id", e["type"]) for e in server.events(user_id)]


async def drained(gateway: Gateway, user_id: str) -> bool:
    r, keys = gateway.services.redis, gateway.services.keys
    return not (await r.xlen(keys.queue(user_id)) or await r.exists(keys.overflow(user_id), keys.queue_bytes(user_id)))


async def test_a_full_queue_keeps_the_oldest_and_reports_the_drops_once(gateway: Gateway, dedicated: DedicatedServer):
    user = await gateway.create_user(dedicated, "full")
    await gateway.create_user(dedicated, "other")
    dedicated.mode["full"] = "down"
    before = dt.datetime.now(dt.UTC)
    for n in range(1, 9):
        # Every event is taken (the provider is acknowledged), dropped or not.
        assert await gateway.services.handoff("full", [ev(n)], dedup_scope="tg") == 1
    after = dt.datetime.now(dt.UTC)
    assert await gateway.services.redis.xlen(gateway.services.keys.queue("full")) == 3
    # Another user is not touched by this one's full queue.
    assert await gateway.services.handoff("other", [ev(1), ev(2)], dedup_scope="tg") == 2
    await dedicated.wait_for(lambda: kinds(dedicated, "other") == [1, 2])

    dedicated.mode["full"] = "ok"
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: len(dedicated.events("full")) == 4)
    events = dedicated.events("full")
    assert kinds(dedicated, "full") == [1, 2, 3, "gateway.overflow"]
    overflow = events[3]
    assert overflow["channel"] == "gateway"
    assert overflow["payload"]["dropped"] == 5
    first, last = parsed(overflow["payload"]["first_dropped_at"]), parsed(overflow["payload"]["last_dropped_at"])
    assert before - dt.timedelta(milliseconds=1) <= first <= last <= after + dt.timedelta(milliseconds=1)
    await eventually(lambda: drained(gateway, "full"))

    # The queue has room again: new events flow, and the drops are not reported a second time.
    assert await gateway.services.handoff("full", [ev(9)], dedup_scope="tg") == 1
    await dedicated.wait_for(lambda: len(dedicated.events("full")) == 5)
    assert kinds(dedicated, "full") == [1, 2, 3, "gateway.overflow", 9]


async def test_the_byte_cap_counts_sealed_bytes_and_frees_them_on_acknowledgement(
    gateway: Gateway, dedicated: DedicatedServer
):
    user = await gateway.create_user(dedicated, "bulky")
    dedicated.mode["bulky"] = "down"
    r, keys = gateway.services.redis, gateway.services.keys
    # Each sealed event is a bit over 1 KiB: three fit under 4096 bytes, the rest do not.
    assert await gateway.services.handoff("bulky", [ev(n, "x" * 700) for n in range(1, 6)], dedup_scope="tg") == 5
    held = [len(fields[b"e"]) for _id, fields in await r.xrange(keys.queue("bulky"))]
    assert 1 < len(held) < 5
    assert int(await r.get(keys.queue_bytes("bulky"))) == sum(held) <= 4096
    dedicated.mode["bulky"] = "ok"
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: len(dedicated.events("bulky")) == len(held) + 1)
    assert dedicated.events("bulky")[-1]["payload"]["dropped"] == 5 - len(held)
    assert kinds(dedicated, "bulky")[:-1] == list(range(1, len(held) + 1))
    await eventually(lambda: drained(gateway, "bulky"))


async def test_the_dedup_window_is_bounded_by_the_cap_too(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "busy")
    r, keys = gateway.services.redis, gateway.services.keys
    for start in range(0, 12, 3):
        assert await gateway.services.handoff("busy", [ev(n) for n in range(start, start + 3)], dedup_scope="tg") == 3
        await dedicated.wait_for(lambda start=start: len(dedicated.events("busy")) == start + 3)
        # Acknowledged, not only received: until then the queue still holds them (and is full).
        await eventually(lambda: drained(gateway, "busy"))
    # At most two ids per event the queue may hold; the newest are the ones kept.
    assert await r.zcard(keys.seen("busy", "tg")) == 6
    assert await gateway.services.handoff("busy", [ev(11)], dedup_scope="tg") == 0
