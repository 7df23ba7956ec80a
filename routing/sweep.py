"""The periodic sweep over every known user (run by each delivery worker about once a minute).

It puts back into `due` any user with queued events, a transaction in flight or an overflow to
report who fell out of it (a crash between queueing and scheduling, or a Redis that lost writes);
users already scheduled keep their time. Since it visits every user anyway, it also counts the
queue totals `/metrics` shows, so a scrape costs no Redis work per user (contract §9.3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from foundation.redis_keys import Keys

BATCH = 200


@dataclass(slots=True)
class _Totals:
    added: int = 0
    depth: int = 0
    oldest_ms: int | None = None


async def sweep(redis: Redis, keys: Keys) -> int:
    """Schedule the users with work who are missing from `due`; return how many were added."""
    totals = _Totals()
    batch: list[str] = []
    async for raw in redis.sscan_iter(keys.users, count=BATCH):
        batch.append(raw.decode())
        if len(batch) >= BATCH:
            await _batch(redis, keys, batch, totals)
            batch = []
    if batch:
        await _batch(redis, keys, batch, totals)
    stats = {"depth": totals.depth, "oldest_ms": totals.oldest_ms or "", "at": repr(time.time())}
    await redis.hset(keys.queue_stats, mapping=stats)
    return totals.added


async def _batch(redis: Redis, keys: Keys, user_ids: list[str], totals: _Totals) -> None:
    pipe = redis.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.xlen(keys.queue(user_id))
        pipe.exists(keys.txn(user_id), keys.overflow(user_id))
    replies = await pipe.execute()
    depths = [int(n) for n in replies[0::2]]
    # An empty stream is no work (the stream key outlives its last entry).
    waiting = [u for u, n, busy in zip(user_ids, depths, replies[1::2], strict=True) if n or int(busy)]
    totals.depth += sum(depths)
    await _oldest(redis, keys, [u for u, n in zip(user_ids, depths, strict=True) if n], totals)
    if waiting:
        added = await redis.zadd(keys.due, dict.fromkeys(waiting, time.time()), nx=True)
        totals.added += int(added)


async def _oldest(redis: Redis, keys: Keys, queued: list[str], totals: _Totals) -> None:
    if not queued:
        return
    heads = redis.pipeline(transaction=False)
    for user_id in queued:
        heads.xrange(keys.queue(user_id), "-", "+", count=1)
    for head in await heads.execute():
        if head:
            ms = int(head[0][0].decode().partition("-")[0])
            totals.oldest_ms = ms if totals.oldest_ms is None else min(totals.oldest_ms, ms)
