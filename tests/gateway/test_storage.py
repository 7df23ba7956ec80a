from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
import redis.exceptions

from foundation import storage
from foundation.storage import connect
from tests.support.gateway import REDIS_URL, wipe
from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.waiting import eventually


async def test_a_burst_larger_than_the_pool_waits_for_connections_instead_of_failing():
    redis = connect(REDIS_URL)
    key = f"t{uuid.uuid4().hex[:12]}:never-pushed"
    try:
        # Each BLPOP holds its connection for 50 ms; twice as many as the pool has must all succeed.
        burst = [redis.blpop([key], timeout=0.05) for _ in range(2 * storage.MAX_CONNECTIONS)]
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert [r for r in results if r is not None] == []
    finally:
        await redis.aclose()


def _moved_replies(cluster: RedisCluster) -> int:
    """MOVED answers the cluster's nodes have given so far."""
    total = 0
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            total += int(client.info("errorstats").get("errorstat_MOVED", {}).get("count", 0))
    return total


async def test_a_burst_on_a_fresh_cluster_client_is_routed_by_key_and_all_succeeds(redis_cluster: RedisCluster):
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    moved_before = _moved_replies(redis_cluster)
    try:
        for round_ in range(5):
            # A new client each round: the burst arrives before it knows the slot map.
            client = connect(redis_cluster.url, cluster=True)
            try:
                burst = [client.set(f"{prefix}{round_}:{i}", b"v") for i in range(100)]
                results = await asyncio.gather(*burst, return_exceptions=True)
            finally:
                await client.aclose()
            assert [r for r in results if r is not True] == []
        # No command was sent to a node that does not own its key.
        assert _moved_replies(redis_cluster) == moved_before
    finally:
        await wipe(prefix, redis_cluster.url, cluster=True)


async def test_a_connection_torn_down_under_a_cluster_command_is_a_redis_error(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
):
    """What redis-py raises when it resets its connections under a running command (slots moving)
    reaches callers as a RedisError, which they answer with 503, not as an AttributeError."""
    client = connect(redis_cluster.url, cluster=True)
    try:
        await client.set("{t}:torn", "1")

        async def torn(*_args: object, **_kwargs: object) -> None:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

        monkeypatch.setattr(redis.asyncio.cluster.RedisCluster, "execute_command", torn)
        monkeypatch.setattr(redis.asyncio.cluster.ClusterPipeline, "execute", torn)
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("{t}:torn")
        pipe = client.pipeline(transaction=False)
        pipe.get("{t}:torn")
        with pytest.raises(redis.exceptions.ConnectionError):
            await pipe.execute()
    finally:
        monkeypatch.undo()
        await client.delete("{t}:torn")
        await client.aclose()


async def test_a_command_whose_connection_is_killed_under_it_runs_again_on_a_fresh_one(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = connect(server.url)
    try:
        waiting = asyncio.create_task(client.blpop(["list"], timeout=5))
        with redis.Redis.from_url(server.url) as admin:

            def blocked() -> list[int]:
                return [int(c["id"]) for c in admin.client_list() if c["cmd"] == "blpop"]

            await eventually(lambda: len(blocked()) == 1)
            first = blocked()[0]
            admin.client_kill_filter(_id=str(first))
            # Run again on a new connection, not failed: the caller never sees the kill.
            await eventually(lambda: blocked() not in ([], [first]))
            admin.rpush("list", b"v")
        assert await waiting == (b"list", b"v")
    finally:
        await client.aclose()
        server.stop()
