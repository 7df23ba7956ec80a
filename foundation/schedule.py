"""Due times shared by every worker process: a Redis sorted set plus leases.

A `DueSet` holds one member (a user id) per piece of recurring work (renew a
Gmail watch, renew a Graph subscription), scored with the time it is next due
in epoch milliseconds. `claim` atomically takes due members and leases them:
their score moves to the end of the lease, and the lease hash records it, so no
other worker takes them while the lease lives, and a worker that dies holding
one only delays it by the lease. `finish` reschedules a member only while its
lease is still the caller's; a `put` made during the lease (a lifecycle event
asking for work now) is kept, so such a request is never lost.

Both keys share one hash tag, so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation.errors import StorageError
from foundation.redis_keys import Keys

log = logging.getLogger(__name__)

# KEYS: due zset, lease hash. ARGV: now_ms, until_ms, scan_limit, take_limit.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  if #out >= tonumber(ARGV[4]) then break end
  local held = redis.call('HGET', KEYS[2], m)
  if (not held) or tonumber(held) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], m)
    redis.call('HSET', KEYS[2], m, ARGV[2])
    table.insert(out, m)
  end
end
return out
"""

# KEYS: due zset, lease hash. ARGV: member, now_ms, until_ms.
# Leases the member whatever its due time; if another worker holds it, asks for a run
# right after that worker finishes instead (returns 0).
_HOLD = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""

# KEYS: due zset, lease hash. ARGV: member, token, next_ms ('' = forget the member).
# Returns 1 when the lease was still the caller's.
_FINISH = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not current then return 1 end
local asked = tonumber(current) ~= tonumber(ARGV[2])
if ARGV[3] == '' then
  if not asked then redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 1
end
if asked and tonumber(current) < tonumber(ARGV[3]) then return 1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Claim:
    member: str
    token: str
    """The lease's end in epoch ms, as stored; proves the lease is still ours."""


Work = Callable[[str], Awaitable[float | None]]
"""Does the work for one member; returns when it is next due (epoch seconds), None to forget it."""


class DueSet:
    def __init__(self, redis: Redis, keys: Keys, name: str, *, lease: float = 120.0) -> None:
        self._redis = redis
        tag = "{sched:" + name + "}"
        self.due_key = keys.global_key(tag + ":due")
        self.lease_key = keys.global_key(tag + ":lease")
        self.lease_ms = int(lease * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._hold = redis.register_script(_HOLD)
        self._finish = redis.register_script(_FINISH)

    def _until(self, now: int) -> str:
        # A few random ms keep two leases of the same member from ever carrying the same token.
        return str(now + self.lease_ms + random.randint(0, 999))

    async def put(self, member: str, at: float) -> None:
        """Make `member` due at `at` (epoch seconds); during a lease, the holder keeps this request."""
        try:
            await self._redis.zadd(self.due_key, {member: int(at * 1000)})
        except RedisError as exc:
            raise StorageError("could not schedule") from exc

    async def remove(self, member: str) -> None:
        try:
            await self._redis.zrem(self.due_key, member)
            await self._redis.hdel(self.lease_key, member)
        except RedisError as exc:
            raise StorageError("could not unschedule") from exc

    async def due_at(self, member: str) -> float | None:
        score = await self._redis.zscore(self.due_key, member)
        return None if score is None else float(score) / 1000

    async def claim(self, limit: int = 16) -> list[Claim]:
        now = now_ms()
        until = self._until(now)
        members = await self._claim(keys=[self.due_key, self.lease_key], args=[now, until, limit * 4, limit])
        return [Claim(m.decode(), until) for m in members]

    async def hold(self, member: str) -> Claim | None:
        """Lease `member` now, due or not; None if another worker holds it (it then runs again soon)."""
        now = now_ms()
        until = self._until(now)
        got = await self._hold(keys=[self.due_key, self.lease_key], args=[member, now, until])
        return Claim(member, until) if int(got) else None

    async def run_now(self, member: str, work: Work, *, retry_after: float = 60.0) -> None:
        """Run `work` for `member` at once under its lease (skipped if another worker holds it)."""
        claim = await self.hold(member)
        if claim is None:
            return
        next_at: float | None = time.time() + retry_after
        try:
            next_at = await work(member)
        finally:
            await self.finish(claim, next_at)

    async def finish(self, claim: Claim, next_at: float | None) -> bool:
        """Reschedule (or forget, when `next_at` is None) if the lease is still ours."""
        nxt = "" if next_at is None else str(int(next_at * 1000))
        return bool(int(await self._finish(keys=[self.due_key, self.lease_key], args=[claim.member, claim.token, nxt])))

    async def held(self, claim: Claim) -> bool:
        token = await self._redis.hget(self.lease_key, claim.member)
        return token is not None and token.decode() == claim.token

    async def next_due(self) -> float | None:
        first = await self._redis.zrange(self.due_key, 0, 0, withscores=True)
        return float(first[0][1]) / 1000 if first else None

    async def run(
        self,
        work: Work,
        *,
        poll: float = 5.0,
        concurrency: int = 8,
        retry_after: float = 300.0,
        name: str = "schedule",
    ) -> None:
        """Claim due members and run `work` for each, forever; several processes may run this at once."""
        gate = asyncio.Semaphore(concurrency)

        async def one(claim: Claim) -> None:
            async with gate:
                try:
                    next_at = await work(claim.member)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The work handles what it expects; anything else must not lose the member.
                    log.exception("scheduled work failed; retrying later", extra={"schedule": name})
                    next_at = time.time() + retry_after
                try:
                    await self.finish(claim, next_at)
                except RedisError:
                    log.warning("could not reschedule; the lease expiry retries it", extra={"schedule": name})

        while True:
            try:
                claims = await self.claim(concurrency)
            except RedisError:
                log.warning("schedule unavailable; retrying", extra={"schedule": name})
                await asyncio.sleep(poll)
                continue
            if claims:
                await asyncio.gather(*(one(c) for c in claims))
                continue
            try:
                upcoming = await self.next_due()
            except RedisError:
                upcoming = None
            wait = poll if upcoming is None else min(poll, max(0.05, upcoming - time.time()))
            await asyncio.sleep(wait)
