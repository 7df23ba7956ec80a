"""A dedicated server that is sick in every way we know: only its own user waits, retries are
byte-identical, and the gateway's promises (Retry-After, ping, hold TTL) hold."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import time

import pytest
from redis.crc import key_slot

from foundation.config import Settings
from routing.delivery import DeliveryWorker
from routing.sender import backoff, parse_retry_after
from tests.support.dedicated import DedicatedServer
from tests.support.delivery import ev, ping
from tests.support.gateway import Gateway, serve


def ids(server: DedicatedServer, user_id: str) -> list[int]:
    return [e["payload"]["update_id"] for e in server.events(user_id)]


def gaps(server: DedicatedServer, user_id: str) -> list[float]:
    times = [t for u, _, t in server.attempt_times if u == user_id]
    return [b - a for a, b in itertools.pairwise(times)]


def test_backoff_starts_at_one_second_doubles_with_jitter_and_caps_at_five_minutes():
    for attempts, base in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (50, 300.0)]:
        values = [backoff(attempts) for _ in range(200)]
        assert all(0.8 * base <= v <= 1.2 * base for v in values)
        assert max(values) - min(values) > 0.1 * base  # jittered, not constant


@pytest.mark.parametrize(
    ("header", "expected"),
    [("5", 5.0), ("0", 1.0), ("-3", 1.0), ("0.2", 1.0), ("7200", 3600.0), ("inf", 3600.0), ("nan", None),
     ("soon", None), ("", None), (None, None)],
)  # fmt: skip
def test_retry_after_is_honoured_within_one_second_and_one_hour(header: str | None, expected: float | None):
    assert parse_retry_after(header) == expected


def test_retry_after_as_http_date():
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 120, usegmt=True), now=now) == 1.0


async def test_failing_server_gets_the_same_txn_and_body_with_backoff_then_ping_delivers(
    gateway: Gateway, dedicated: DedicatedServer
):
    user = await gateway.create_user(dedicated, "sick")
    dedicated.mode["sick"] = "error"
    await gateway.services.handoff("sick", [ev(1), ev(2)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 3, timeout=10)
    first, second = gaps(dedicated, "sick")[:2]
    assert first >= 0.75  # 1 s -20 %
    assert second >= 1.5  # 2 s -20 %: doubled
    txns = {txn for _, txn in dedicated.attempts}
    assert len(txns) == 1, "every retry reuses the txn_id"
    assert all(len(bodies) == 1 for bodies in dedicated.bodies.values()), "every retry sends the same bytes"
    # The next retry is about 4 s away; a ping from the recovered server delivers at once.
    dedicated.mode["sick"] = "ok"
    started = asyncio.get_running_loop().time()
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: len(dedicated.received) == 1, timeout=5)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert dedicated.received[0].txn_id in txns
    assert ids(dedicated, "sick") == [1, 2]
    assert len(dedicated.bodies[dedicated.received[0].txn_id]) == 1


async def test_429_with_retry_after_is_waited_out_and_ping_cuts_it_short(gateway: Gateway, dedicated: DedicatedServer):
    user = await gateway.create_user(dedicated, "busy")
    dedicated.mode["busy"] = "limited"
    dedicated.retry_after = "2"
    await gateway.services.handoff("busy", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 2, timeout=10)
    assert gaps(dedicated, "busy")[0] >= 1.9  # Retry-After, not the 1 s backoff
    dedicated.retry_after = "3600"
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 3, timeout=10)
    status = await (await gateway.admin("GET", "/admin/v1/users/busy")).json()
    assert status["server"]["health"] == "failing"
    assert status["server"]["last_failure"] == "http_429"
    assert status["queue"]["pending"] == 1
    dedicated.mode["busy"] = "ok"
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: ids(dedicated, "busy") == [1], timeout=3)


async def test_flapping_server_gets_everything_once_in_order(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "flappy")
    dedicated.mode["flappy"] = "flap"
    for n in range(6):
        await gateway.services.handoff("flappy", [ev(n)], dedup_scope="tg")
        await asyncio.sleep(0.3)
    await dedicated.wait_for(lambda: len(ids(dedicated, "flappy")) == 6, timeout=20)
    assert ids(dedicated, "flappy") == list(range(6))
    assert len({r.txn_id for r in dedicated.received}) == len(dedicated.received), "no txn acknowledged twice"
    assert all(len(bodies) == 1 for bodies in dedicated.bodies.values())


async def test_dead_servers_do_not_delay_other_users(gateway: Gateway, dedicated: DedicatedServer):
    sick = {"hang1": "hang", "hang2": "hang", "down": "down", "error": "error", "slow": "slow"}
    dedicated.delay = 0.6
    for user_id, mode in sick.items():
        await gateway.create_user(dedicated, user_id)
        dedicated.mode[user_id] = mode
    await gateway.create_user(dedicated, "healthy")
    for n in range(3):
        for user_id in sick:
            await gateway.services.handoff(user_id, [ev(n)], dedup_scope="tg")
    await asyncio.sleep(0.3)  # every sick server now has a transaction open or failed
    loop = asyncio.get_running_loop()
    for n in range(5):
        started = loop.time()
        await gateway.services.handoff("healthy", [ev(n)], dedup_scope="tg")
        await dedicated.wait_for(lambda n=n: len(ids(dedicated, "healthy")) == n + 1, timeout=5)
        assert loop.time() - started < 1.0
    assert ids(dedicated, "healthy") == list(range(5))
    await dedicated.wait_for(lambda: len(ids(dedicated, "slow")) == 3, timeout=10)
    assert ids(dedicated, "slow") == [0, 1, 2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Short attempt timeout and lease, so a hanging server is retried within the test.
    return dataclasses.replace(settings, delivery_timeout=1.0, delivery_lease=3.0)


async def test_hanging_server_is_retried_with_the_same_txn_after_the_timeout(
    gateway: Gateway, dedicated: DedicatedServer
):
    await gateway.create_user(dedicated, "stuck")
    dedicated.mode["stuck"] = "hang"
    await gateway.services.handoff("stuck", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 2, timeout=10)
    assert len({txn for _, txn in dedicated.attempts}) == 1
    assert not dedicated.overlaps, "the timed-out attempt was abandoned before the retry"
    dedicated.mode["stuck"] = "ok"
    await dedicated.wait_for(lambda: ids(dedicated, "stuck") == [1], timeout=10)


async def test_ping_releases_events_held_for_an_hour_at_once(gateway: Gateway, dedicated: DedicatedServer):
    user = await gateway.create_user(dedicated, "later")
    dedicated.mode["later"] = "down"
    dedicated.retry_after = "3600"
    await gateway.services.handoff("later", [ev(1)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) == 1)
    await asyncio.sleep(0.2)
    assert len(dedicated.attempts) == 1
    dedicated.mode["later"] = "ok"
    started = asyncio.get_running_loop().time()
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: ids(dedicated, "later") == [1], timeout=3)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_several_workers_on_one_redis_keep_order_and_one_txn_in_flight(
    gateway: Gateway, dedicated: DedicatedServer
):
    services = gateway.services
    extra = [
        DeliveryWorker(services.redis, services.keys, services.registry, hold_ttl=3600, lease=3.0) for _ in range(3)
    ]
    runs = [asyncio.create_task(w.run()) for w in extra]
    try:
        users = [f"u{i}" for i in range(4)]
        for user_id in users:
            await gateway.create_user(dedicated, user_id)
        dedicated.mode.update(dict.fromkeys(users, "slow"))
        dedicated.delay = 0.02
        for n in range(40):
            for user_id in users:
                await services.handoff(user_id, [ev(n)], dedup_scope="tg")
            if n % 10 == 0:
                await asyncio.sleep(0.05)
        await dedicated.wait_for(lambda: all(len(ids(dedicated, u)) == 40 for u in users), timeout=30)
        for user_id in users:
            assert ids(dedicated, user_id) == list(range(40))
        assert dedicated.overlaps == []
    finally:
        for w in extra:
            await w.aclose()
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def test_sweep_reschedules_a_queue_that_fell_out_of_the_schedule(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "lost")
    dedicated.mode["lost"] = "down"
    dedicated.retry_after = "3600"
    await gateway.services.handoff("lost", [ev(1)], dedup_scope="tg")
    redis, keys = gateway.services.redis, gateway.services.keys
    while (await redis.zscore(keys.due, "lost") or 0) < time.time() + 3000:  # noqa: ASYNC110 (polls Redis)
        await asyncio.sleep(0.02)  # the failed attempt's retry is scheduled an hour ahead
    # As if the process died between queueing and scheduling, or Redis lost the schedule.
    await redis.zrem(keys.due, "lost")
    dedicated.mode["lost"] = "ok"
    assert await gateway.services.worker.sweep() == 1
    assert await gateway.services.worker.sweep() == 0  # already scheduled: left alone
    await dedicated.wait_for(lambda: ids(dedicated, "lost") == [1], timeout=5)


async def test_every_key_of_a_user_shares_the_users_hash_slot(gateway: Gateway, dedicated: DedicatedServer):
    user = await gateway.create_user(dedicated, "tagged")
    dedicated.mode["tagged"] = "down"
    await gateway.services.handoff("tagged", [ev(1)], dedup_scope="tg")
    await ping(gateway, user["server_token"])
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)
    redis = gateway.services.redis
    keys = [k.decode() async for k in redis.scan_iter(match=f"{gateway.settings.key_prefix}*")]
    mine = [k for k in keys if "tagged" in k]
    assert {k.split("}:", 1)[1] for k in mine} >= {"user", "q", "txn", "seen:tg", "counters"}
    assert all("{u:tagged}" in k for k in mine)
    slots = {key_slot(k.encode()) for k in mine}
    assert len(slots) == 1


async def test_a_ping_heard_from_another_process_while_its_user_is_being_settled_here_delivers_at_once(
    settings: Settings, dedicated: DedicatedServer
):
    """The ping lands after this worker read the ping flag and before it gave the lease up: the
    flag came too late for the worker, and the ping's own process cannot claim the user. The
    wake-up the ping publishes must make this worker look again as the delivery ends, not at
    its next poll (half a minute here) or the retry time (an hour)."""
    async with serve(settings, "web") as web:
        services = web.services
        worker = DeliveryWorker(services.redis, services.keys, services.registry, hold_ttl=3600, lease=3.0, poll=30.0)
        heard: list[float] = []
        listening = worker.wake

        def wake(user_id: str | None = None) -> None:
            heard.append(time.monotonic())
            listening(user_id)

        worker.wake = wake  # type: ignore[method-assign]
        pinged: list[float] = []
        release = worker._leases.release

        async def release_after_a_ping(user_id: str) -> bool:
            if not pinged:
                # The failed attempt's retry is scheduled and the flag read: the ping comes now.
                dedicated.mode["late"] = "ok"
                before = len(heard)
                pinged.append(time.monotonic())
                await ping(web, user["server_token"])
                await dedicated.wait_for(lambda: len(heard) > before, timeout=5)
            return await release(user_id)

        worker._leases.release = release_after_a_ping  # type: ignore[method-assign]
        run = asyncio.create_task(worker.run())
        try:
            user = await web.create_user(dedicated, "late")
            dedicated.mode["late"] = "down"
            dedicated.retry_after = "3600"
            await services.handoff("late", [ev(1)], dedup_scope="tg")
            await dedicated.wait_for(lambda: ids(dedicated, "late") == [1], timeout=10)
            assert pinged, "the ping came between the flag's read and the lease's release"
            assert time.monotonic() - pinged[0] < 3.0
            assert len(dedicated.attempts) == 2
        finally:
            await worker.aclose()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
