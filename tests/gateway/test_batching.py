from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from foundation.batching import MAX_BATCH, Batcher, Queue, command, script, shared
from foundation.storage import connect
from tests.support.gateway import REDIS_URL, wipe
from tests.support.redis_servers import RedisServer


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = connect(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"t{uuid.uuid4().hex[:12]}:"
    try:
        yield value
    finally:
        await wipe(value)


class CountingRedis:
    """The real client, counting the pipelines it sends."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.pipelines = 0

    def pipeline(self, transaction: bool = True) -> Any:
        self.pipelines += 1
        return self.redis.pipeline(transaction=transaction)


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(redis: Redis, prefix: str):
    counting = CountingRedis(redis)
    batch = Batcher(cast(Redis, counting))

    def add(i: int) -> Queue:
        return lambda p: p.incrby(f"{prefix}n{i % 7}", i)

    # Fewer calls than one batch holds: one pipeline, executed in call order.
    replies = await asyncio.gather(*(batch.call(command(add(i))) for i in range(MAX_BATCH - 1)))
    assert counting.pipelines == 1
    totals: dict[int, int] = {}
    for i in range(len(replies)):
        totals[i % 7] = totals.get(i % 7, 0) + i
    for k, total in totals.items():
        assert int(await redis.get(f"{prefix}n{k}")) == total
    # Each reply is the value right after that caller's own increment, in call order.
    assert replies[:7] == list(range(7))


async def test_more_calls_than_a_batch_holds_all_get_their_replies(redis: Redis, prefix: str):
    counting = CountingRedis(redis)
    batch = Batcher(cast(Redis, counting))
    key = f"{prefix}many"
    replies = await asyncio.gather(*(batch.call(command(lambda p: p.incr(key))) for _ in range(3 * MAX_BATCH)))
    assert sorted(replies) == list(range(1, 3 * MAX_BATCH + 1))
    assert 3 <= counting.pipelines <= 4


async def test_the_calls_of_one_run_go_out_in_order_in_one_round_trip(redis: Redis, prefix: str):
    counting = CountingRedis(redis)
    batch = Batcher(cast(Redis, counting))
    key = f"{prefix}list"

    def push(i: int) -> Queue:
        return lambda p: p.rpush(key, i)

    replies = await batch.run(*(command(push(i)) for i in range(50)))
    assert replies == list(range(1, 51))
    assert [int(v) for v in await redis.lrange(key, 0, -1)] == list(range(50))
    assert counting.pipelines == 1


async def test_one_failing_call_fails_alone(redis: Redis, prefix: str):
    await redis.set(f"{prefix}text", "not a number")
    batch = Batcher(redis)
    good = batch.call(command(lambda p: p.incr(f"{prefix}counter")))
    bad = batch.call(command(lambda p: p.incr(f"{prefix}text")))
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], ResponseError)


async def test_scripts_run_again_after_redis_forgot_them(tmp_path: Path):
    server = RedisServer(tmp_path, appendonly=False)  # its own: SCRIPT FLUSH is server-wide
    server.start()
    redis = connect(server.url)
    try:
        incr = redis.register_script("return redis.call('INCR', KEYS[1])")
        batch = Batcher(redis)
        assert await batch.call(script(incr, ["s"], [])) == 1
        await redis.script_flush()
        replies = await asyncio.gather(*(batch.call(script(incr, ["s"], [])) for _ in range(5)))
        assert sorted(replies) == [2, 3, 4, 5, 6]
        # A plain command after a forgotten script in one run runs again after it: order holds.
        await redis.script_flush()
        reply, after = await batch.run(script(incr, ["s"], []), command(lambda p: p.get("s")))
        assert (reply, int(after)) == (7, 7)
    finally:
        await redis.aclose()
        server.stop()


async def test_a_lost_connection_fails_every_call_of_the_batch():
    redis = connect("redis://127.0.0.1:1/0")
    try:
        batch = Batcher(redis)
        calls = (batch.call(command(lambda p: p.get("x"))) for _ in range(3))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)
    finally:
        await redis.aclose()


async def test_components_on_one_client_share_one_batcher_and_one_pipeline(redis: Redis, prefix: str):
    counting = cast(Redis, CountingRedis(redis))
    first, second = shared(counting), shared(counting)
    assert first is second
    replies = await asyncio.gather(
        first.call(command(lambda p: p.incr(f"{prefix}a"))), second.call(command(lambda p: p.incr(f"{prefix}b")))
    )
    assert list(replies) == [1, 1]
    assert cast(CountingRedis, counting).pipelines == 1
