"""The shared Telegram limiter, against the single Redis and against a real Redis Cluster.

The machine running these tests may be slow and loaded, so the assertions are about order,
counts and refusals, which Redis decides from its own arithmetic. Where real time is measured,
it is only a lower bound (a slow machine can only make waits longer), or an upper bound many
times above what a correct limiter needs and below what a broken one would take.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from channels.telegram.ratelimit import Limiter, Limits
from foundation.errors import TooManyRequests
from foundation.redis_keys import Keys
from foundation.storage import connect
from tests.support.gateway import REDIS_URL, wipe

# Monotonic and wall clocks may drift apart by a few milliseconds between two readings.
CLOCK_SLACK = 0.02


@dataclass(frozen=True)
class Target:
    url: str
    cluster: bool

    def connect(self) -> Redis:
        return connect(self.url, cluster=self.cluster)


@pytest.fixture(params=["single", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "cluster":
        return Target(request.getfixturevalue("redis_cluster").url, cluster=True)
    return Target(REDIS_URL, cluster=False)


@pytest.fixture
async def keys(target: Target) -> AsyncIterator[Keys]:
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    try:
        yield Keys(prefix)
    finally:
        await wipe(prefix, target.url, cluster=target.cluster)


@pytest.fixture
async def redis(target: Target) -> AsyncIterator[Redis]:
    client = target.connect()
    try:
        yield client
    finally:
        await client.aclose()


async def timed(limiter: Limiter, user: str, chat: int, *, group: bool = False) -> float:
    await limiter.acquire(user, chat, group=group)
    return asyncio.get_running_loop().time()


class Sends:
    """Calls through one limiter, and the order in which they were let through."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.order: list[str] = []
        self.under_way = asyncio.Event()

    async def one(self, user: str, chat: int) -> None:
        await self.limiter.acquire(user, chat, group=False)
        self.order.append(user)
        self.under_way.set()

    def flood(self, user: str, count: int, first_chat: int) -> list[asyncio.Task[None]]:
        # Each to its own chat: only the bot-wide limit holds them back.
        return [asyncio.create_task(self.one(user, first_chat + i)) for i in range(count)]


async def test_one_user_flooding_does_not_delay_another_users_message(redis: Redis, keys: Keys):
    sends = Sends(Limiter(redis, keys, "42", Limits(bot_interval=1 / 20)))
    flood = sends.flood("flooder", 80, 1000)  # a four-second backlog at 20/s
    await sends.under_way.wait()
    sends.order.append("asked")
    await sends.one("quiet", 7)
    await asyncio.gather(*flood)
    asked, answered = sends.order.index("asked"), sends.order.index("quiet")
    # Redis lets at most one flood message through every 50 ms however slow the machine is, so
    # most of the backlog was still waiting when the quiet user asked…
    assert sends.order[answered:].count("flooder") >= 40
    # …and the quiet user went ahead of it. A few flood messages may have been let through
    # while the quiet call was on its way to Redis (one per 50 ms at most); a limiter without
    # fairness would have let the whole backlog go first.
    assert sends.order[asked:answered].count("flooder") <= 8


async def test_two_flooding_users_share_the_bot_evenly(redis: Redis, keys: Keys):
    sends = Sends(Limiter(redis, keys, "42", Limits(bot_interval=1 / 20)))
    tasks = sends.flood("a", 40, 100)
    await sends.under_way.wait()
    tasks += sends.flood("b", 40, 200)
    await asyncio.gather(*tasks)
    order = sends.order
    first_b, last_a = order.index("b"), len(order) - 1 - order[::-1].index("a")
    both_waiting = order[first_b : last_a + 1]
    # b was not put behind a's backlog (at 20/s a cannot have sent 20 of its 40 before b asked)…
    assert both_waiting.count("a") >= 20
    # …and while both had messages waiting they took turns.
    assert abs(both_waiting.count("a") - both_waiting.count("b")) <= 2
    for start in range(len(both_waiting) - 10):
        assert 3 <= both_waiting[start : start + 10].count("b") <= 7, both_waiting


async def test_the_bot_wide_limit_spans_all_chats(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(bot_interval=0.1))
    started = asyncio.get_running_loop().time()
    times = sorted(await asyncio.gather(*[timed(limiter, f"u{i}", 300 + i) for i in range(8)]))
    for n, at in enumerate(times, start=1):
        assert at - started >= (n - 1) * 0.1 - CLOCK_SLACK, (n, times)
    # One a minute for the whole bot: the second message, to another chat of another user,
    # would wait a minute and is refused.
    slow = Limiter(redis, keys, "43", Limits(bot_interval=60.0, max_wait=5.0))
    await slow.acquire("u1", 1, group=False)
    with pytest.raises(TooManyRequests) as refused:
        await slow.acquire("u2", 2, group=False)
    assert 50.0 < refused.value.retry_after <= 60.0


async def test_per_chat_limit_is_shared_by_processes(redis: Redis, keys: Keys, target: Target):
    other = target.connect()
    try:
        limits = Limits(chat_interval=0.3, chat_burst=2)
        one, two = Limiter(redis, keys, "42", limits), Limiter(other, keys, "42", limits)
        started = asyncio.get_running_loop().time()
        times = sorted(await asyncio.gather(*[timed(one if i % 2 else two, "u", 5) for i in range(6)]))
        # Two at once, then one every 0.3 s, whichever process sends: the n-th message cannot
        # go before (n - 2) * 0.3 s (two processes limiting alone would finish by 0.3 s).
        for n, at in enumerate(times, start=1):
            assert at - started >= max(0, n - 2) * 0.3 - CLOCK_SLACK, (n, times)
    finally:
        await other.aclose()


async def test_a_chat_takes_a_short_burst_then_one_message_an_interval(redis: Redis, keys: Keys, target: Target):
    other = target.connect()
    try:
        limits = Limits(chat_interval=60.0, chat_burst=2, max_wait=5.0)
        one, two = Limiter(redis, keys, "42", limits), Limiter(other, keys, "42", limits)
        await one.acquire("u", 5, group=False)
        await two.acquire("u", 5, group=False)
        # The next slot is a minute after the first message; another process knows it too.
        with pytest.raises(TooManyRequests) as refused:
            await two.acquire("u", 5, group=False)
        assert 50.0 < refused.value.retry_after <= 60.0
        await one.acquire("u", 6, group=False)  # another chat is not held back
    finally:
        await other.aclose()


async def test_group_limit_caps_messages_per_minute(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(chat_interval=0.01, chat_burst=10, group_interval=0.4, group_burst=2))
    started = asyncio.get_running_loop().time()
    times = sorted(await asyncio.gather(*[timed(limiter, "u", -100, group=True) for i in range(5)]))
    for n, at in enumerate(times, start=1):
        assert at - started >= max(0, n - 2) * 0.4 - CLOCK_SLACK, (n, times)


async def test_the_group_limit_applies_to_groups_only(redis: Redis, keys: Keys):
    limits = Limits(chat_interval=0.01, chat_burst=10, group_interval=60.0, group_burst=2, max_wait=5.0)
    limiter = Limiter(redis, keys, "42", limits)
    for _ in range(2):
        await limiter.acquire("u", -100, group=True)
    with pytest.raises(TooManyRequests) as refused:
        await limiter.acquire("u", -100, group=True)
    assert 50.0 < refused.value.retry_after <= 60.0
    # Five to a private chat, which only its own (loose) limit holds: none would wait a minute.
    for _ in range(5):
        await limiter.acquire("u", 100, group=False)


async def test_a_call_that_would_wait_too_long_is_refused_at_once(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(chat_interval=60.0, chat_burst=3, max_wait=30.0))
    await asyncio.gather(*[limiter.acquire("u", 9, group=False) for _ in range(3)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TooManyRequests) as refused:
        await limiter.acquire("u", 9, group=False)
    # Refused when it asked, not after waiting out max_wait (30 s) first.
    assert loop.time() - started < 15.0
    assert 30.0 < refused.value.retry_after <= 60.0


async def test_a_pause_holds_every_process_until_it_ends(redis: Redis, keys: Keys, target: Target):
    other = target.connect()
    try:
        pausing, sending = Limiter(redis, keys, "42", Limits()), Limiter(other, keys, "42", Limits())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pausing.pause(1.0)
        await sending.acquire("u", 1, group=False)
        assert loop.time() - started >= 1.0 - CLOCK_SLACK
        await pausing.pause(30.0)
        assert 20.0 < await sending.paused_for() <= 30.0
        with pytest.raises(TooManyRequests):  # longer than max_wait (10 s)
            await sending.acquire("u", 1, group=False)
    finally:
        await other.aclose()


async def test_a_waiting_call_whose_process_died_stops_blocking_others(redis: Redis, keys: Keys):
    # A call queued and then never heard from again (its process was killed between taking its
    # place in line and leaving it): its place is what `_enter` leaves behind. Kept in line, it
    # holds the next call back until max_wait, and that call is refused...
    held = Limiter(redis, keys, "41", Limits(stale_after=60.0, max_wait=1.0))
    await held._enter("ghost", 1, group=False, budget=10)
    with pytest.raises(TooManyRequests):
        await held.acquire("alive", 2, group=False)
    # ...but a place not heard from for `stale_after` is dropped, and the next call goes ahead.
    limiter = Limiter(redis, keys, "42", Limits(stale_after=0.5, max_wait=5.0))
    await limiter._enter("ghost", 1, group=False, budget=10)
    waited = await limiter.acquire("alive", 2, group=False)
    assert waited < 2.0  # stale_after and a poll or two, far short of max_wait


async def test_a_flood_pauses_its_chat_then_the_bot_once_two_users_hit_it(redis: Redis, keys: Keys):
    limiter = Limiter(redis, keys, "42", Limits(max_wait=5.0))
    assert await limiter.flood("u1", 10, 30.0) == "chat"
    with pytest.raises(TooManyRequests) as refused:
        await limiter.acquire("u1", 10, group=False)
    assert 25.0 < refused.value.retry_after <= 30.0
    await limiter.acquire("u1", 11, group=False)  # the same user's other chat is not held back
    await limiter.acquire("u2", 20, group=False)
    # The gateway's own replies never make it bot-wide; a call with no chat pauses its user only.
    assert await limiter.flood("~gateway", 30, 30.0, tenant=False) == "chat"
    assert await limiter.flood("u1", None, 30.0) == "user"
    with pytest.raises(TooManyRequests):
        await limiter.acquire("u1", None, group=False)
    await limiter.acquire("u2", 21, group=False)
    assert await limiter.paused_for() == 0
    # A second tenant's 429 within seconds: Telegram is limiting the bot as a whole.
    assert await limiter.flood("u2", 22, 7200.0) == "bot"
    assert 3500.0 < await limiter.paused_for() <= 3600.0
