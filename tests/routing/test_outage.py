"""The outage bookkeeping as the hand-over writes it, on a single Redis and on a real Redis
Cluster: one notice per address per outage, expired events counted per address, and nothing
written for a user that is gone.

The gateway here runs without a delivery worker (`role="web"`), so only the test starts and
ends outages: a delivery's own failure or success would move them at times of its choosing."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest

from foundation.config import Settings
from foundation.errors import NotFound
from foundation.types import Event
from routing.handoff import Item
from routing.hooks import Hooks
from routing.outage import Origin
from routing.plugin import Plugin
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, serve

_refs = itertools.count(1)


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[Gateway]:
    async with serve(settings, role="web") as gateway:
        yield gateway


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


async def written(gateway: Gateway, user_id: str, address: str, *, after: float = 1e-9, ref: str | None = None) -> bool:
    """A message from chat `address` handed over; whether its chat is to be told of the outage now."""
    ref = ref or str(next(_refs))
    item = Item(Event("telegram.update", "telegram", {"update_id": int(ref)}), dedup=ref)
    origin = Origin("telegram", address, ref, after)
    return (await gateway.services.handoff.hand_over(user_id, [item], origin=origin)).tell


async def test_each_address_is_told_once_per_outage_and_again_in_the_next(web: Gateway, dedicated: DedicatedServer):
    await web.create_user(dedicated, "u1")
    assert not await written(web, "u1", "42")  # no outage yet
    await an_outage_started(web, "u1")
    assert not await written(web, "u1", "42", after=3600)  # not failing for long enough
    assert [await written(web, "u1", "42"), await written(web, "u1", "42"), await written(web, "u1", "7")] == [
        True,
        False,
        True,
    ]
    await web.services.outages.failed("u1")  # the same outage goes on
    assert not await written(web, "u1", "42")
    # An acknowledgement ends it (the delivery worker writes `last_ok_at`); the next failure starts another.
    await web.services.redis.hset(web.services.keys.counters("u1"), "last_ok_at", repr(time.time()))
    assert not await written(web, "u1", "42")
    await an_outage_started(web, "u1")
    assert await written(web, "u1", "42")


async def test_expired_events_are_counted_per_address_and_forgotten(settings: Settings, dedicated: DedicatedServer):
    told: list[tuple[str, dict[str, int]]] = []

    async def hook(user_id: str, counts: dict[str, int]) -> None:
        told.append((user_id, counts))

    listening = Plugin(name="test-listener", hooks=Hooks(expired={"telegram": hook}))
    async with serve(settings, role="web", extra=[listening]) as gateway:
        outages = gateway.services.outages
        await gateway.create_user(dedicated, "u1")
        for address, ref in [("42", "1"), ("42", "2"), ("-100", "3"), ("42", "2")]:  # a repeat counts once
            await written(gateway, "u1", address, ref=ref)
        cutoff = int(time.time() * 1000) + 1
        while time.time() * 1000 <= cutoff:
            pass
        await written(gateway, "u1", "42", ref="4")
        await outages.expired("u1", 10, cutoff)
        assert told == [("u1", {"42": 2, "-100": 1})]
        assert await user_keys(gateway, "u1") >= {"held"}  # the recent one is still held
        await outages.expired("u1", 10, int(time.time() * 1000) + 1)
        assert told[1] == ("u1", {"42": 1})
        assert "held" not in await user_keys(gateway, "u1")


async def test_nothing_is_written_for_a_user_that_is_gone(web: Gateway, dedicated: DedicatedServer):
    await web.create_user(dedicated, "gone")
    assert not await written(web, "gone", "42")  # this process now holds the user's key
    await web.services.outages.failed("gone")
    # The user's keys go, as an erasure removes them, while this process still holds the key.
    redis, keys = web.services.redis, web.services.keys
    for key in [keys.user("gone"), *[k async for k in redis.scan_iter(match=keys.user_pattern("gone"))]]:
        await redis.delete(key)
    assert await user_keys(web, "gone") == set()
    await web.services.outages.failed("gone")
    with pytest.raises(NotFound):
        await written(web, "gone", "42")
    assert await user_keys(web, "gone") == set()
    # The positive control: the same calls for a registered user leave their keys.
    await web.create_user(dedicated, "real")
    await web.services.outages.failed("real")
    await written(web, "real", "42")
    assert {"outage", "held"} <= await user_keys(web, "real")
