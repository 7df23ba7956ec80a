from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from foundation.batching import LAZY_WAIT, MAX_BATCH, Batcher, command, script, shared
from foundation.storage import connect
from tests.support.gateway import REDIS_URL, wipe
from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.waiting import eventually


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(redis: Redis, prefix: str):
    batch = Batcher(redis)
    # Fewer calls than one batch holds: one write, executed in call order.
    replies = await asyncio.gather(
        *(batch.call(command("INCRBY", f"{prefix}n{i % 7}", i)) for i in range(MAX_BATCH - 1))
    )
    assert batch.batches == 1
    totals: dict[int, int] = {}
    for i in range(len(replies)):
        totals[i % 7] = totals.get(i % 7, 0) + i
    for k, total in totals.items():
        assert int(await redis.get(f"{prefix}n{k}")) == total
    # Each reply is the value right after that caller's own increment, in call order.
    assert replies[:7] == list(range(7))


async def test_more_calls_than_a_batch_holds_all_get_their_replies(redis: Redis, prefix: str):
    batch = Batcher(redis)
    key = f"{prefix}many"
    replies = await asyncio.gather(*(batch.call(command("INCR", key)) for _ in range(3 * MAX_BATCH)))
    assert sorted(replies) == list(range(1, 3 * MAX_BATCH + 1))
    assert 3 <= batch.batches <= 4


async def test_the_calls_of_one_run_go_out_in_order_in_one_round_trip(redis: Redis, prefix: str):
    batch = Batcher(redis)
    key = f"{prefix}list"
    replies = await batch.run(*(command("RPUSH", key, i) for i in range(50)))
    assert replies == list(range(1, 51))
    assert [int(v) for v in await redis.lrange(key, 0, -1)] == list(range(50))
    assert batch.batches == 1


async def test_replies_are_raw_as_redis_sends_them(redis: Redis, prefix: str):
    await redis.hset(f"{prefix}h", mapping={"a": "1", "b": "2"})
    batch = Batcher(redis)
    replies = await batch.run(
        command("HGETALL", f"{prefix}h"),
        command("HGETALL", f"{prefix}none"),
        command("HSETNX", f"{prefix}h", "a", "9"),
        command("GET", f"{prefix}none"),
        command("SET", f"{prefix}s", 1.5),
        command("GET", f"{prefix}s"),
    )
    flat, empty, kept, missing, ok, value = replies
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {b"a": b"1", b"b": b"2"}
    assert (empty, kept, missing, ok, value) == ([], 0, None, b"OK", b"1.5")


async def test_one_failing_call_fails_alone(redis: Redis, prefix: str):
    await redis.set(f"{prefix}text", "not a number")
    batch = Batcher(redis)
    good = batch.call(command("INCR", f"{prefix}counter"))
    bad = batch.call(command("INCR", f"{prefix}text"))
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == 1
    assert type(results[1]) is ResponseError
    assert batch.batches == 1


async def test_a_bad_argument_fails_its_caller_alone_before_anything_is_queued(redis: Redis, prefix: str):
    batch = Batcher(redis)
    with pytest.raises(DataError):
        command("SET", f"{prefix}k", True)  # what redis-py refuses too
    assert await batch.call(command("SET", f"{prefix}k", 1.5)) == b"OK"
    assert batch.batches == 1


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
        reply, after = await batch.run(script(incr, ["s"], []), command("GET", "s"))
        assert (reply, int(after)) == (7, 7)
    finally:
        await redis.aclose()
        server.stop()


async def test_a_lost_connection_fails_every_call_of_the_batch():
    redis = connect("redis://127.0.0.1:1/0")
    try:
        batch = Batcher(redis)
        calls = (batch.call(command("GET", "x")) for _ in range(3))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results)
    finally:
        await redis.aclose()


async def test_a_batch_whose_connection_is_killed_under_it_runs_again_on_a_fresh_one(tmp_path: Path):
    """As redis-py's pipeline did with the client's Retry: the caller never sees the kill."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    redis = connect(server.url)
    try:
        batch = Batcher(redis)
        assert await batch.call(command("PING")) == b"PONG"  # connected: the next batch is written at once
        waiting = asyncio.create_task(batch.call(command("BLPOP", "list", 5)))

        async def blocked() -> list[int]:
            return [int(c["id"]) for c in await redis.client_list() if c["cmd"] == "blpop"]

        async def one_blocked() -> bool:
            return len(await blocked()) == 1

        await eventually(one_blocked)
        first = (await blocked())[0]
        await redis.client_kill_filter(_id=str(first))

        async def sent_again() -> bool:  # on a new connection
            return (await blocked()) not in ([], [first])

        await eventually(sent_again)
        await redis.rpush("list", b"v")
        assert await waiting == [b"list", b"v"]
    finally:
        await redis.aclose()
        server.stop()


async def test_a_frozen_redis_fails_a_batch_after_the_clients_retries(tmp_path: Path):
    """Four attempts, each waiting the socket timeout, with the client's backoff between them
    (0.1, 0.2, 0.4 s): what redis-py's pipeline did; then TimeoutError, and Redis back is served."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    assert server.proc is not None
    redis = connect(f"{server.url}?socket_timeout=0.3")
    try:
        batch = Batcher(redis)
        assert await batch.call(command("SET", "k", "v")) == b"OK"
        server.proc.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await batch.call(command("GET", "k"))
        assert time.monotonic() - began >= 4 * 0.3 + 0.7
        server.proc.send_signal(signal.SIGCONT)
        assert await batch.call(command("GET", "k")) == b"v"
    finally:
        server.proc.send_signal(signal.SIGCONT)
        await redis.aclose()
        server.stop()


async def test_a_batch_out_when_its_client_is_closed_fails_at_once_without_retries(tmp_path: Path):
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    redis = connect(server.url)
    try:
        batch = Batcher(redis)
        assert await batch.call(command("PING")) == b"PONG"
        waiting = asyncio.create_task(batch.call(command("BLPOP", "list", 5)))
        await eventually(lambda: batch.batches == 2)
        await redis.aclose()
        # Not retried: the retries' backoff alone (0.1 + 0.2 + 0.4 s) would outlast this.
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(waiting, 0.6)
    finally:
        server.stop()


async def test_components_on_one_client_share_one_batcher_and_one_pipeline(redis: Redis, prefix: str):
    first, second = shared(redis), shared(redis)
    assert first is second
    replies = await asyncio.gather(
        first.call(command("INCR", f"{prefix}a")), second.call(command("INCR", f"{prefix}b"))
    )
    assert list(replies) == [1, 1]
    assert first.batches == 1


async def test_a_cluster_answers_in_the_same_raw_shapes_as_one_redis(redis_cluster: RedisCluster, prefix: str):
    """The cluster path goes through redis-py (RESP3, response callbacks); callers see the same."""
    single, cluster = connect(REDIS_URL), connect(redis_cluster.url, cluster=True)
    key = f"{prefix}{{u:1}}"
    answers = []
    try:
        for client in (single, cluster):
            await client.hset(f"{key}:h", mapping={"a": "1"})
            await client.zadd(f"{key}:z", {"m": 1})
            listed = client.register_script("return {redis.call('INCR', KEYS[1]), false, 'x'}")
            answers.append(
                await Batcher(client).run(
                    command("HGETALL", f"{key}:h"),
                    command("HGETALL", f"{key}:none"),
                    command("HSETNX", f"{key}:h", "a", "2"),
                    command("HSETNX", f"{key}:h", "b", "2"),
                    command("HGET", f"{key}:h", "b"),
                    command("ZREM", f"{key}:z", "m"),
                    command("GET", f"{key}:none"),
                    script(listed, [f"{key}:n"], []),
                )
            )
        assert answers[0] == [[b"a", b"1"], [], 0, 1, b"2", 1, None, [1, None, b"x"]]
        assert answers[1] == answers[0]
    finally:
        await single.aclose()
        await cluster.aclose()
        await wipe(prefix, redis_cluster.url, cluster=True)


async def _busy(batch: Batcher, prefix: str) -> None:
    """Calls that are not lazy, close together (16 in one turn of the loop): a busy lane."""
    await asyncio.gather(*(batch.call(command("GET", f"{prefix}busy")) for _ in range(16)))


async def test_a_lazy_call_on_a_busy_lane_waits_for_company_and_goes_with_the_next_call(redis: Redis, prefix: str):
    batch = Batcher(redis)
    await _busy(batch, prefix)
    sent = batch.batches
    lazy = asyncio.ensure_future(batch.run(command("INCR", f"{prefix}lazy"), lazy=True))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batch.batches == sent and not lazy.done()  # still waiting for company
    # A call that is not lazy takes it along, in order before it: one round trip for both.
    assert await batch.call(command("GET", f"{prefix}lazy")) == b"1"
    assert await lazy == [1]
    assert batch.batches == sent + 1


async def test_a_lazy_call_on_a_quiet_lane_goes_out_at_the_next_turn_without_waiting(redis: Redis, prefix: str):
    batch = Batcher(redis)
    for lane_was_busy in (False, True):
        if lane_was_busy:
            await _busy(batch, prefix)
            # A quiet spell: calls far apart (25 ms) bring the average gap back over the wait.
            for _ in range(8):
                await asyncio.sleep(0.025)
                await batch.call(command("GET", f"{prefix}busy"))
        sent = batch.batches
        lazy = asyncio.ensure_future(batch.run(command("INCR", f"{prefix}quiet"), lazy=True))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert batch.batches == sent + 1, "sent at the next turn of the loop, not after a wait"
        assert len(await lazy) == 1


async def test_a_lazy_call_alone_goes_out_within_its_wait(redis: Redis, prefix: str):
    batch = Batcher(redis)
    started = time.monotonic()
    assert await batch.run(command("INCR", f"{prefix}alone"), lazy=True) == [1]
    assert batch.batches == 1
    assert time.monotonic() - started < LAZY_WAIT + 1.0  # the wait, and no more than a round trip
    # Two lazy calls keep each other waiting no longer than the first one's wait.
    replies = await asyncio.gather(
        batch.run(command("INCR", f"{prefix}alone"), lazy=True), batch.run(command("INCR", f"{prefix}alone"), lazy=True)
    )
    assert list(replies) == [[2], [3]] and batch.batches == 2
