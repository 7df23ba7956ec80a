from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from channels.telegram.ratelimit import Limiter, Limits
from gateway.errors import TooManyRequests
from routing.keys import Keys
from tests.conftest import REDIS_URL, wipe


@pytest.fixture
async def keys() -> AsyncIterator[Keys]:
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    try:
        yield Keys(prefix)
    finally:
        await wipe(prefix)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def timed(limiter: Limiter, user: str, chat: int, *, group: bool = False) -> float:
    loop = asyncio.get_running_loop()
    await limiter.acquire(user, chat, group=group)
    return loop.time()


async def test_one_user_flooding_does_not_delay_another_users_message(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(bot_interval=1 / 20))
    loop = asyncio.get_running_loop()
    started = loop.time()
    # 80 messages to 80 different chats: every one may go at once as far as its chat is concerned,
    # so only the bot-wide 20/s holds them back (a four-second backlog).
    flood = [asyncio.create_task(timed(limiter, "flooder", 1000 + i)) for i in range(80)]
    await asyncio.sleep(0.5)
    asked = loop.time()
    done = await timed(limiter, "quiet", 7)
    waited = done - asked
    flood_done = await asyncio.gather(*flood)
    assert max(flood_done) - started >= 3.0  # the backlog was real
    assert sum(1 for t in flood_done if t > done) >= 40  # and the quiet user went ahead of most of it
    assert waited < 2.0


async def test_two_flooding_users_share_the_bot_evenly(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(bot_interval=1 / 20))
    order: list[str] = []

    async def one(user: str, chat: int) -> None:
        await limiter.acquire(user, chat, group=False)
        order.append(user)

    tasks = [asyncio.create_task(one("a", 100 + i)) for i in range(30)]
    await asyncio.sleep(0.2)
    tasks += [asyncio.create_task(one("b", 200 + i)) for i in range(30)]
    await asyncio.gather(*tasks)
    # Once b arrives, the two alternate: in any stretch of 10 after b's first, each has 3 to 7.
    first_b = order.index("b")
    window = order[first_b : first_b + 20]
    assert 7 <= window.count("b") <= 13


async def test_per_chat_limit_is_shared_by_processes(redis: Redis, keys: Keys):
    other = Redis.from_url(REDIS_URL)
    try:
        limits = Limits(chat_interval=0.3, chat_burst=2)
        one, two = Limiter(redis, keys, "42", limits), Limiter(other, keys, "42", limits)
        started = asyncio.get_running_loop().time()
        times = sorted(await asyncio.gather(*[timed(one if i % 2 else two, "u", 5) for i in range(6)]))
        # Two at once, then one every 0.3 s, whichever process sends.
        assert times[-1] - started >= 4 * 0.3 - 0.02
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        assert all(g >= 0.25 for g in gaps[2:]), gaps
    finally:
        await other.aclose()


async def test_group_limit_caps_messages_per_minute(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(chat_interval=0.01, chat_burst=10, group_interval=0.4, group_burst=2))
    started = asyncio.get_running_loop().time()
    times = sorted(await asyncio.gather(*[timed(limiter, "u", -100, group=True) for i in range(5)]))
    assert times[-1] - started >= 3 * 0.4 - 0.02
    private = sorted(await asyncio.gather(*[timed(limiter, "u", 100) for i in range(5)]))
    assert private[-1] - private[0] < 0.4  # the group limit applies to groups only


async def test_a_call_that_would_wait_too_long_is_refused_at_once(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(chat_interval=1.0, chat_burst=1, max_wait=2.5))
    loop = asyncio.get_running_loop()
    accepted = [asyncio.create_task(timed(limiter, "u", 9)) for _ in range(3)]
    await asyncio.sleep(0.05)
    started = loop.time()
    with pytest.raises(TooManyRequests) as refused:
        await limiter.acquire("u", 9, group=False)
    assert loop.time() - started < 0.5
    assert 2.5 < refused.value.retry_after <= 3.5
    await asyncio.gather(*accepted)


async def test_a_pause_holds_every_process_until_it_ends(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits())
    await limiter.pause(1.0)
    assert 0.5 < await limiter.paused_for() <= 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    await limiter.acquire("u", 1, group=False)
    assert loop.time() - started >= 0.9
    await limiter.pause(30.0)
    with pytest.raises(TooManyRequests):
        await limiter.acquire("u", 1, group=False)


async def test_a_waiting_call_whose_process_died_stops_blocking_others(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(stale_after=0.5))
    # A call queued and then never heard from again (its process was killed).
    await limiter._enter("ghost", 1, group=False, budget=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await limiter.acquire("alive", 2, group=False)
    assert loop.time() - started < 2.0
