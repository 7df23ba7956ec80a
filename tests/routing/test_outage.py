"""The outage bookkeeping on its own, on a single Redis and on a real Redis Cluster: one notice
per address per outage, expired events counted per address, and nothing written for a user
that is gone."""

from __future__ import annotations

import time

from foundation.config import Settings
from routing.hooks import Hooks
from routing.outage import Origin
from routing.plugin import Plugin
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, serve


async def user_keys(gateway: Gateway, user_id: str) -> set[str]:
    keys = gateway.services.keys
    tag = keys.user_tag(user_id)
    found = gateway.services.redis.scan_iter(match=keys.user_pattern(user_id))
    return {k.decode().removeprefix(tag + ":") async for k in found}


async def an_outage_started(gateway: Gateway, user_id: str) -> None:
    await gateway.services.outages.failed(user_id)
    started = time.time()
    while time.time() <= started:  # the clock moves on: the outage is older than zero seconds
        pass


async def test_each_address_is_told_once_per_outage_and_again_in_the_next(gateway: Gateway, dedicated: DedicatedServer):
    outages = gateway.services.outages
    await gateway.create_user(dedicated, "u1")

    async def tell(address: str, ref: str, after: float = 1e-9) -> bool:
        return await outages.wrote("u1", Origin("telegram", address, ref, after), handed_at=time.time())

    assert not await tell("42", "1")  # no outage yet
    await an_outage_started(gateway, "u1")
    assert not await tell("42", "2", after=3600)  # not failing for long enough
    assert [await tell("42", "3"), await tell("42", "4"), await tell("7", "5")] == [True, False, True]
    await outages.failed("u1")  # the same outage goes on
    assert not await tell("42", "6")
    # An acknowledgement ends it (the delivery worker writes `last_ok_at`); the next failure starts another.
    await gateway.services.redis.hset(gateway.services.keys.counters("u1"), "last_ok_at", repr(time.time()))
    assert not await tell("42", "7")
    await an_outage_started(gateway, "u1")
    assert await tell("42", "8")


async def test_expired_events_are_counted_per_address_and_forgotten(settings: Settings, dedicated: DedicatedServer):
    told: list[tuple[str, dict[str, int]]] = []

    async def hook(user_id: str, counts: dict[str, int]) -> None:
        told.append((user_id, counts))

    listening = Plugin(name="test-listener", hooks=Hooks(expired={"telegram": hook}))
    async with serve(settings, extra=[listening]) as gateway:
        outages = gateway.services.outages
        await gateway.create_user(dedicated, "u1")
        long_ago = time.time() - 60
        for address, ref in [("42", "1"), ("42", "2"), ("-100", "3"), ("42", "2")]:  # a repeat counts once
            await outages.wrote("u1", Origin("telegram", address, ref, 0.0), handed_at=long_ago)
        await outages.wrote("u1", Origin("telegram", "42", "4", 0.0), handed_at=time.time())
        await outages.expired("u1", 10, int((time.time() - 30) * 1000))
        assert told == [("u1", {"42": 2, "-100": 1})]
        assert await user_keys(gateway, "u1") >= {"held"}  # the recent one is still held
        await outages.expired("u1", 10, int(time.time() * 1000) + 1)
        assert told[1] == ("u1", {"42": 1})
        assert "held" not in await user_keys(gateway, "u1")


async def test_nothing_is_written_for_a_user_that_is_gone(gateway: Gateway, dedicated: DedicatedServer):
    outages = gateway.services.outages
    await outages.failed("ghost")
    assert not await outages.wrote("ghost", Origin("telegram", "42", "1", 0.0), handed_at=time.time())
    assert await user_keys(gateway, "ghost") == set()
    # The positive control: the same calls for a registered user leave their keys.
    await gateway.create_user(dedicated, "real")
    await outages.failed("real")
    await outages.wrote("real", Origin("telegram", "42", "1", 0.0), handed_at=time.time())
    assert {"outage", "held"} <= await user_keys(gateway, "real")
