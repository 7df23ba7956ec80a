"""How many commands a Redis server has run, from its own `INFO commandstats` (the INFO calls
that ask are left out). Only meaningful on a Redis that the test has to itself."""

from __future__ import annotations

from redis.asyncio import Redis


async def commands_run(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")
