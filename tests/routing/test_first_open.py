"""The first open of an idle user rides in the hand-over's own round trip (`DeliveryWorker.adopt`):
what that shortcut must never change — retry times, one attempt at a time, order, nothing lost
when the hand-over is cut short — and that it really saves the round trips."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from foundation import batching
from foundation.types import Event
from routing import courier
from routing.handoff import Item
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway


def ev(n: int) -> Item:
    return Item(Event("telegram.update", "telegram", {"update_id": n, "text": f"hello {n}"}), dedup=str(n))


def ids(server: DedicatedServer, user_id: str) -> list[int]:
    return [e["payload"]["update_id"] for e in server.events(user_id)]


def attempt_times(server: DedicatedServer, user_id: str) -> list[float]:
    return [t for u, _txn, t in server.attempt_times if u == user_id]


async def test_an_event_for_an_idle_user_costs_two_round_trips_in_all(gateway: Gateway, dedicated: DedicatedServer):
    if gateway.settings.redis_cluster:
        pytest.skip("on a cluster every call is its own round trip (foundation/batching.py)")
    await gateway.create_user(dedicated, "quick")
    await gateway.services.handoff("quick", [ev(1)], dedup_scope="tg")  # warms the caches
    await dedicated.wait_for(lambda: ids(dedicated, "quick") == [1])
    await asyncio.sleep(0.2)
    batcher = batching.shared(gateway.services.redis)
    for n in range(2, 6):
        before = batcher.batches
        await gateway.services.handoff("quick", [ev(n)], dedup_scope="tg")
        await dedicated.wait_for(lambda n=n: ids(dedicated, "quick")[-1:] == [n])
        await asyncio.sleep(0.1)  # the acknowledgement's batch, sent after the server answered
        # One for the hand-over with the schedule and the open, one for the acknowledgement
        # (which leaves `due` and gives the lease up): no read of `due`, no claim of its own.
        assert batcher.batches - before == 2
    lease = gateway.services.keys.lease("quick")
    assert await gateway.services.redis.exists(lease) == 0
    assert await gateway.services.redis.zscore(gateway.services.keys.due, "quick") is None


async def test_a_new_event_does_not_cut_short_the_wait_for_a_retry(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "patient")
    dedicated.mode["patient"] = "limited"
    dedicated.retry_after = "2"
    await gateway.services.handoff("patient", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(attempt_times(dedicated, "patient")) == 1)
    await asyncio.sleep(0.2)
    # The user is idle here (nobody holds its lease) but its transaction awaits its retry time:
    # the new event's hand-over must not open it early.
    await gateway.services.handoff("patient", [ev(2)], dedup_scope="tg")
    await asyncio.sleep(0.5)
    assert len(attempt_times(dedicated, "patient")) == 1
    dedicated.mode["patient"] = "ok"
    await dedicated.wait_for(lambda: ids(dedicated, "patient") == [1, 2], timeout=10)
    first, second = attempt_times(dedicated, "patient")[:2]
    assert second - first >= 1.9
    assert dedicated.overlaps == []


async def test_a_hand_over_cut_short_leaves_nothing_stuck(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "cut")
    await gateway.services.handoff("cut", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: ids(dedicated, "cut") == [1])
    # Cancelled while its round trip (queue, schedule, first open) is out: the worker was told
    # to serve the user from that open, and must neither wait for it forever nor send twice.
    for n in range(2, 12):
        task = asyncio.create_task(gateway.services.handoff("cut", [ev(n)], dedup_scope="tg"))
        for _ in range(n % 3):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Whatever those queued is delivered with the next event, in order, once each.
    await gateway.services.handoff("cut", [ev(12)], dedup_scope="tg")
    await dedicated.wait_for(lambda: ids(dedicated, "cut")[-1:] == [12], timeout=10)
    got = ids(dedicated, "cut")
    assert got == sorted(set(got))
    assert dedicated.overlaps == []
    deadline = time.monotonic() + 5
    while "cut" in gateway.services.worker._active:  # its acknowledgement, then nothing
        assert time.monotonic() < deadline, "the delivery of a cut-short hand-over never ended"
        await asyncio.sleep(0.02)


async def test_a_repeat_for_an_idle_user_gives_the_lease_back(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "again")
    await gateway.services.handoff("again", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: ids(dedicated, "again") == [1])
    await asyncio.sleep(0.1)
    assert await gateway.services.handoff("again", [ev(1)], dedup_scope="tg") == 0
    redis, keys = gateway.services.redis, gateway.services.keys
    deadline = time.monotonic() + 5
    while await redis.exists(keys.lease("again")) or await redis.zscore(keys.due, "again") is not None:
        assert time.monotonic() < deadline, "the lease or the schedule stayed after a repeat"
        await asyncio.sleep(0.02)
    assert ids(dedicated, "again") == [1]


async def test_only_a_long_attempt_moves_the_due_time_past_the_lease(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "slowpoke")
    dedicated.mode["slowpoke"] = "slow"
    dedicated.delay = courier.MARK_AFTER + 1.0
    await gateway.services.handoff("slowpoke", [ev(1)], dedup_scope="tg")
    redis, keys = gateway.services.redis, gateway.services.keys
    await dedicated.wait_for(lambda: len(attempt_times(dedicated, "slowpoke")) == 1)
    scheduled = await redis.zscore(keys.due, "slowpoke")
    assert scheduled is not None and scheduled <= time.time()  # as the hand-over scheduled it
    await asyncio.sleep(courier.MARK_AFTER + 0.3)
    # Past MARK_AFTER the attempt still runs: other workers are told to stay away until the lease
    # could have lapsed.
    moved = await redis.zscore(keys.due, "slowpoke")
    assert moved is not None and moved > time.time() + gateway.settings.delivery_lease / 2
    await dedicated.wait_for(lambda: ids(dedicated, "slowpoke") == [1], timeout=10)
    await asyncio.sleep(0.1)
    assert await redis.zscore(keys.due, "slowpoke") is None
