"""Acknowledged writes wait for replicas (ALLY_ACK_REPLICAS): one `WAIT` per flush, 503 when
too few confirm, replicas detected at start, and `/readyz` naming a primary without one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from foundation.batching import Ack, Batcher, command
from foundation.errors import NotReplicated
from foundation.replication import REFRESH
from foundation.storage import connect
from gateway.app import create_app
from tests.support import ingress
from tests.support.gateway import make_settings, random_public_key
from tests.support.redis_servers import RedisServer, ReplicatedRedis
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[ReplicatedRedis]:
    servers = ReplicatedRedis.start(tmp_path / "redis")
    try:
        yield servers
    finally:
        servers.stop()


def waits(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def not_replicated() -> float:
    return REGISTRY.get_sample_value("ally_writes_not_replicated_total") or 0.0


async def test_a_burst_of_durable_writes_waits_for_the_replica_once(pair: ReplicatedRedis):
    redis = connect(pair.primary.url)
    try:
        batch = Batcher(redis)
        batch.ack = Ack(replicas=1, timeout_ms=2000)
        before = waits(pair.primary)
        writes = [batch.call(command("SET", f"k{i}", i, durable=True)) for i in range(100)]
        assert all(await asyncio.gather(*writes))
        assert waits(pair.primary) == before + 1
        with pair.replica.client() as replica:
            assert replica.get("k99") == b"99"  # on the replica when the callers got their answers
    finally:
        await redis.aclose()


async def test_with_the_replica_frozen_durable_writes_fail_and_the_rest_of_the_batch_does_not(
    pair: ReplicatedRedis,
):
    redis = connect(pair.primary.url)
    try:
        batch = Batcher(redis)
        batch.ack = Ack(replicas=1, timeout_ms=200)
        counted = not_replicated()
        pair.replica.freeze()
        durable = batch.call(command("SET", "acked", 1, durable=True))
        plain = batch.call(command("INCR", "plain"))
        results = await asyncio.gather(durable, plain, return_exceptions=True)
        assert isinstance(results[0], NotReplicated) and results[0].confirmed == 0
        assert results[1] == 1
        assert not_replicated() == counted + 1
        # The same two in one run: one batch, one WAIT, and still only the durable one fails.
        with pytest.raises(NotReplicated):
            await batch.run(command("SET", "acked", 2, durable=True), command("INCR", "plain"))
        assert await batch.call(command("GET", "plain")) == b"2"
    finally:
        pair.replica.thaw()
        await redis.aclose()


async def test_a_durable_write_waiting_for_replicas_holds_up_no_plain_call(pair: ReplicatedRedis):
    redis = connect(pair.primary.url)
    try:
        batch = Batcher(redis)
        batch.ack = Ack(replicas=1, timeout_ms=1500)
        pair.replica.freeze()
        durable = asyncio.create_task(batch.call(command("SET", "acked", 1, durable=True)))
        await eventually(lambda: batch.batches == 1)  # out, its WAIT holding its connection
        assert await batch.call(command("INCR", "plain")) == 1
        assert not durable.done()  # the plain call was answered while the WAIT still waits
        with pytest.raises(NotReplicated):
            await durable
    finally:
        pair.replica.thaw()
        await redis.aclose()


async def test_durable_writes_made_while_a_wait_is_out_go_together_behind_one_more(pair: ReplicatedRedis):
    redis = connect(pair.primary.url)
    try:
        batch = Batcher(redis)
        batch.ack = Ack(replicas=1, timeout_ms=300)
        before = waits(pair.primary)
        pair.replica.freeze()
        first = asyncio.create_task(batch.call(command("SET", "first", 1, durable=True)))
        await eventually(lambda: batch.batches == 1)
        later = [asyncio.create_task(batch.call(command("SET", f"k{i}", i, durable=True))) for i in range(20)]
        results = await asyncio.gather(first, *later, return_exceptions=True)
        assert all(isinstance(r, NotReplicated) for r in results)
        assert batch.batches == 2
        assert waits(pair.primary) == before + 2  # not one WAIT of 300 ms after another for each
    finally:
        pair.replica.thaw()
        await redis.aclose()


async def started(settings: Any) -> TestClient[Any, Any]:
    client = TestClient(TestServer(create_app(settings, extra=[ingress.PLUGIN]), port=0))
    await client.start_server()
    return client


async def register(client: TestClient[Any, Any], admin_token: str) -> None:
    resp = await client.put(
        "/admin/v1/users/u1",
        json={"server_url": "http://127.0.0.1:9/u1", "server_public_key": random_public_key()},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status == 201, await resp.text()


async def delivered_once(client: TestClient[Any, Any], seq: int, tries: int = 20) -> int:
    """Posts `seq` until it is answered 200, as a provider does; returns how many posts it took."""
    for attempt in range(1, tries + 1):
        resp = await client.post("/test/ingress/u1", json={"seq": seq})
        if resp.status == 200:
            return attempt
        assert resp.status == 503, await resp.text()
    raise AssertionError(f"seq {seq} was never acknowledged in {tries} tries")


async def test_replicas_are_found_at_start_and_acknowledged_writes_wait_for_one(tmp_path: Path, pair: ReplicatedRedis):
    settings = make_settings(tmp_path, redis_url=pair.primary.url)  # ALLY_ACK_REPLICAS unset
    client = await started(settings)
    try:
        assert (await client.get("/readyz")).status == 200
        await register(client, settings.admin_token or "")
        assert await delivered_once(client, 1) >= 1  # loads the scripts too
        before = waits(pair.primary)
        attempts = await delivered_once(client, 2)
        # One WAIT per attempt (a loaded machine may time one out: a provider's retry, then).
        assert waits(pair.primary) == before + attempts
    finally:
        await client.close()


async def test_ack_replicas_without_a_replica_is_not_ready_and_refuses_writes(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = make_settings(tmp_path, redis_url=server.url, ack_replicas=1, ack_timeout_ms=100)
    client = await started(settings)
    try:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {
            "status": "unavailable",
            "redis": "up",
            "ack_replicas": 1,
            "primaries_lacking_replicas": ["redis"],
        }
        await register(client, settings.admin_token or "")  # registering waits for no replica
        resp = await client.post("/test/ingress/u1", json={"seq": 1})
        assert resp.status == 503 and (await resp.json())["error"] == "storage_unavailable"
        assert resp.headers["Retry-After"] == "1"
    finally:
        await client.close()
        server.stop()


def topology_reads(server: RedisServer) -> int:
    """INFO calls the server has run (this one not yet counted): the single-primary topology read."""
    with server.client() as client:
        return int(client.info("commandstats").get("cmdstat_info", {}).get("calls", 0))


async def test_readiness_probes_report_the_refreshed_topology_without_reading_it(
    tmp_path: Path, own_redis: RedisServer
):
    client = await started(make_settings(tmp_path, redis_url=own_redis.url))
    try:
        before = topology_reads(own_redis)
        statuses = [(await client.get("/readyz")).status for _ in range(20)]
        # Our own INFO counts once; a refresh landing meanwhile adds one more, never one per probe.
        assert topology_reads(own_redis) - before - 1 <= 1
        assert statuses == [200] * 20
    finally:
        await client.close()


async def test_a_gateway_started_before_redis_is_ready_soon_after_redis_answers(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    client = await started(make_settings(tmp_path, redis_url=server.url))
    try:
        resp = await client.get("/readyz")
        assert (resp.status, await resp.json()) == (503, {"status": "unavailable", "redis": "down"})
        await asyncio.to_thread(server.start)

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        # Until the topology is read it is not ready; then it is, long before the 5 s refresh.
        await eventually(ready, timeout=REFRESH)
    finally:
        await client.close()
        server.stop()
