"""Who may start an AI request now: `ALLY_AI_CONCURRENCY` per user, and the monthly cap by reservation.

Both hold across processes, in two Redis keys per user (same hash slot as the
usage hash, so one script sees all three):

    {prefix}{u:<id>}:ai:inflight   sorted set: request id -> lease expiry (ms)
    {prefix}{u:<id>}:ai:reserved   hash: request id -> tokens reserved

A request takes a slot before its body is read (so at most that many bodies per
user are in memory), then reserves `max_tokens` plus an estimate of its input
(`size // 4`: about four bytes of JSON per token, an overestimate for text) while
the month's usage plus the other reservations is still below the cap. It settles
after the answer: the real usage is recorded and the reservation dropped. So the
month can pass the cap by at most one request's reservation: each request was
let in while everything already counted or reserved stayed below it.

A slot is a lease renewed while the request runs; a process that dies leaves
leases that lapse after `LEASE` seconds instead of slots held for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ai.errors import QuotaExceeded
from ai.metering import TOTAL_FIELD, Meter, month_of, next_month_start
from ai.request import MessagesRequest
from foundation.errors import StorageError, TooManyRequests
from foundation.redis_keys import Keys

log = logging.getLogger(__name__)

LEASE = 60.0
RETRY_AFTER = 2.0
BYTES_PER_TOKEN = 4

# Drops lapsed leases and their reservations; shared head of both scripts.
_LAPSE = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
for _, id in ipairs(lapsed) do redis.call('HDEL', KEYS[2], id) end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2]) end
"""
# ARGV: id, now_ms, lease_ms, limit. 1: slot taken, 0: all slots busy.
_ENTER = (
    _LAPSE
    + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
# KEYS[3]: the month's usage hash. ARGV: id, now_ms, lease_ms, tokens, cap.
# {0, used}: reserved; {1, used}: the cap is reached; {2, used + reserved}: the rest is reserved.
_RESERVE = (
    _LAPSE
    + """
local used = tonumber(redis.call('HGET', KEYS[3], '"""
    + TOTAL_FIELD
    + """') or '0')
if used >= tonumber(ARGV[5]) then return {1, used} end
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
if used + reserved >= tonumber(ARGV[5]) then return {2, used + reserved} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {0, used}
"""
)
# ARGV: id, expiry_ms, lease_ms. Renews a lease still held.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
"""


class Admission:
    def __init__(self, redis: Redis, keys: Keys, meter: Meter, *, concurrency: int) -> None:
        self._redis = redis
        self._keys = keys
        self._meter = meter
        self.concurrency = concurrency
        self._enter = redis.register_script(_ENTER)
        self._reserve = redis.register_script(_RESERVE)
        self._renew = redis.register_script(_RENEW)

    def _pair(self, user_id: str) -> list[str]:
        return [self._keys.user_key(user_id, "ai:inflight"), self._keys.user_key(user_id, "ai:reserved")]

    async def enter(self, user_id: str) -> Slot:
        """A slot for one request, or 429 `ai_busy` with `Retry-After` when all are taken."""
        slot = Slot(self, user_id, uuid.uuid4().hex)
        args = [slot.id, _ms(time.time()), _ms(LEASE), self.concurrency]
        try:
            taken = await self._enter(keys=self._pair(user_id), args=args)
        except RedisError as exc:
            raise StorageError("AI admission could not be checked") from exc
        if not taken:
            raise TooManyRequests(
                "ai_busy", f"at most {self.concurrency} AI requests may be in flight at once", retry_after=RETRY_AFTER
            )
        slot.start()
        return slot

    async def _reserve_for(self, slot: Slot, tokens: int) -> None:
        cap = self._meter.cap
        if cap is None:
            return
        now = time.time()
        keys = [*self._pair(slot.user_id), self._meter.usage_key(slot.user_id, month_of(now))]
        try:
            outcome, used = await self._reserve(keys=keys, args=[slot.id, _ms(now), _ms(LEASE), tokens, cap])
        except RedisError as exc:
            raise StorageError("the AI cap could not be checked") from exc
        if outcome == 1:
            raise QuotaExceeded(cap=cap, used=int(used), resets_at=next_month_start(now))
        if outcome == 2:
            raise TooManyRequests(
                "ai_busy", "the rest of this month's AI cap is held by requests in flight", retry_after=RETRY_AFTER
            )

    async def _renew_lease(self, slot: Slot) -> None:
        args = [slot.id, _ms(time.time() + LEASE), _ms(LEASE)]
        await self._renew(keys=self._pair(slot.user_id), args=args)

    async def _release(self, slot: Slot) -> None:
        inflight, reserved = self._pair(slot.user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(inflight, slot.id)
            pipe.hdel(reserved, slot.id)
            await pipe.execute()


class Slot:
    """One request's place: reserve tokens once the body is known, release when done (also on error)."""

    def __init__(self, admission: Admission, user_id: str, slot_id: str) -> None:
        self._admission = admission
        self.user_id = user_id
        self.id = slot_id
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._keep())

    async def reserve(self, request: MessagesRequest) -> None:
        """Hold `max_tokens` plus the input estimate against the cap; 402 or 429 when it has no room."""
        await self._admission._reserve_for(self, request.max_tokens + request.size // BYTES_PER_TOKEN)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            try:
                await self._admission._renew_lease(self)
            except RedisError:
                log.warning("an AI request's lease could not be renewed", extra={"user_id": self.user_id})

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        try:
            await self._admission._release(self)
        except RedisError:
            # The lease lapses on its own; the slot is back within LEASE seconds.
            log.warning("an AI request's slot could not be released", extra={"user_id": self.user_id})


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
