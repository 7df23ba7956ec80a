"""The one hand-over every channel uses: seal, then queue durably, in order, per user.

`Handoff.__call__` returns only after the sealed events are in the user's Redis
stream and the user is scheduled for delivery, so a channel may acknowledge its
provider as soon as it returns. Plaintext never leaves this function.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import batching, metrics, user_fields
from foundation.clock import iso_now
from foundation.errors import NotFound, StorageError
from foundation.redis_keys import Keys
from foundation.types import Event, SealedEvent
from routing.registry import Registry
from routing.sealing import seal

log = logging.getLogger(__name__)

SEEN_WINDOW_MS = 7 * 24 * 3600 * 1000
SEEN_PER_EVENT_CAP = 2
"""The dedup set of one scope keeps at most this many ids per event the queue may hold."""

QUEUED, DUPLICATE, DROPPED = 1, 0, 2

# KEYS: stream, seen zset, counters, user record, queued bytes, overflow record. ARGV: now_ms,
# window_ms, the server key the events were sealed to, max events, max bytes, max seen ids, then
# (dedup_id, envelope, channel) triples. Replies {-1} when the user is gone or being erased:
# checked in the same atomic step as the write, so an erasure never races a late event back into
# Redis. Events sealed to a key that is no longer the user's are refused ({-2}) and sealed again by
# the caller: the key is cached per process, and this is where a stale copy is caught. Otherwise
# {0, code per item}: QUEUED, DUPLICATE, or DROPPED because the queue is at a cap (§9.2). What is
# kept stays the oldest; a dropped event leaves no dedup id behind (a redelivery is dropped again or,
# once there is room, queued) and is counted in the overflow record, which the delivery worker turns
# into one `gateway.overflow` event once the queue has room again.
_ENQUEUE = user_fields.lua("""
local user = redis.call('HMGET', KEYS[4], @server_url, @erasing, @server_public_key)
if not user[1] or user[2] then return {-1} end
if user[3] ~= ARGV[3] then return {-2} end
local count = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[5]) or '0')
local max_events, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local codes, added, added_bytes, dropped = {0}, 0, 0, 0
for i = 7, #ARGV, 3 do
  local dedup, envelope = ARGV[i], ARGV[i + 1]
  local code = 1
  if dedup ~= '' and redis.call('ZSCORE', KEYS[2], dedup) then
    code = 0
  elseif count >= max_events or bytes + #envelope > max_bytes then
    code = 2
    dropped = dropped + 1
  else
    if dedup ~= '' then redis.call('ZADD', KEYS[2], ARGV[1], dedup) end
    redis.call('XADD', KEYS[1], '*', 'e', envelope, 'c', ARGV[i + 2])
    count, bytes = count + 1, bytes + #envelope
    added, added_bytes = added + 1, added_bytes + #envelope
  end
  codes[#codes + 1] = code
end
if added > 0 then
  redis.call('INCRBY', KEYS[5], added_bytes)
  redis.call('HINCRBY', KEYS[3], 'events_in', added)
end
if dropped > 0 then
  redis.call('HINCRBY', KEYS[6], 'dropped', dropped)
  redis.call('HSETNX', KEYS[6], 'first_ms', ARGV[1])
  redis.call('HSET', KEYS[6], 'last_ms', ARGV[1])
end
-- The PEXPIRE below is a write even when every item was a duplicate: a provider's retry after a
-- 503 (its first attempt written, not yet replicated) must not be acknowledged on a WAIT that
-- only covers this connection's older writes; WAIT counts from the connection's last write.
if #ARGV > 6 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return codes
""")


# KEYS: due. ARGV: score, user_id, wake channel. One key, so it runs on Redis Cluster too.
_SCHEDULE = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  return 1
end
return 0
"""


def new_id(prefix: str) -> str:
    """Time-ordered, unguessable id: prefix + 10 hex of ms time + 14 hex random (under 32 chars)."""
    return f"{prefix}_{int(time.time() * 1000):010x}{os.urandom(7).hex()}"


@dataclass(frozen=True, slots=True)
class Item:
    event: Event
    dedup: str = ""
    """Scope-unique id of the provider's message (update_id, Pub/Sub messageId...); '' for none."""


@dataclass(frozen=True, slots=True)
class Caps:
    """What one user's queue may hold (contract §9.2)."""

    events: int = 10_000
    bytes: int = 64 * 1024 * 1024


DEFAULT_CAPS = Caps()


class Handoff:
    def __init__(
        self, redis: Redis, keys: Keys, registry: Registry, wake: Callable[[str], None], caps: Caps = DEFAULT_CAPS
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._wake = wake
        self._caps = caps
        self._enqueue = redis.register_script(_ENQUEUE)
        self._schedule = redis.register_script(_SCHEDULE)
        self._batch = batching.shared(redis)

    async def __call__(self, user_id: str, items: Sequence[Item], *, dedup_scope: str = "default") -> int:
        """Seal and durably queue `items` for `user_id`; return how many were new (not duplicates).

        New events that find the queue at a cap count as new: they are dropped, counted, and
        reported to the server later (contract §9.2); the provider is acknowledged either way."""
        if not items:
            return 0
        try:
            codes = await self._enqueue_sealed(user_id, items, dedup_scope)
        except RedisError as exc:
            raise StorageError("could not queue event") from exc
        for item, code in zip(items, codes, strict=True):
            channel = item.event.channel
            if code == QUEUED:
                metrics.EVENTS_IN.labels(channel).inc()
            elif code == DUPLICATE:
                metrics.DROPPED.labels(channel, "duplicate").inc()
                log.debug("duplicate dropped", extra={"channel": channel, "scope": dedup_scope})
            else:
                metrics.DROPPED.labels(channel, "queue_full").inc()
        if DROPPED in codes:
            log.info("queue full: new events dropped", extra={"user_id": user_id, "count": codes.count(DROPPED)})
        return sum(1 for code in codes if code != DUPLICATE)

    async def _enqueue_sealed(self, user_id: str, items: Sequence[Item], dedup_scope: str) -> list[int]:
        keys = [
            self._keys.queue(user_id),
            self._keys.seen(user_id, dedup_scope),
            self._keys.counters(user_id),
            self._keys.user(user_id),
            self._keys.queue_bytes(user_id),
            self._keys.overflow(user_id),
        ]
        caps = self._caps
        key = self._registry.cached_sealing_key(user_id)
        for _ in range(3):
            if key is None:
                key = await self._registry.sealing_key(user_id)
            raw, public_key = key
            received_at = iso_now()
            args: list[str | bytes | int] = [
                int(time.time() * 1000),
                SEEN_WINDOW_MS,
                raw,
                caps.events,
                caps.bytes,
                caps.events * SEEN_PER_EVENT_CAP,
            ]
            for item in items:
                event_id = new_id("evt")
                sealed = SealedEvent(
                    event_id,
                    item.event.type,
                    item.event.channel,
                    received_at,
                    seal(public_key, user_id, event_id, item.event.payload),
                    public_key.kid,
                )
                args += [item.dedup, orjson.dumps(sealed.as_json()), item.event.channel]
            # Queued and scheduled in one round trip: the two calls go out in this order on one
            # connection, so the schedule runs right after the write (also for duplicates: a retry
            # after a crash between the two must still schedule what the first attempt queued).
            # A refused write leaves a schedule that finds nothing to send.
            reply, scheduled = await self._batch.run(
                batching.script(self._enqueue, keys, args, durable=True), self._schedule_call(user_id, time.time())
            )
            self._woken(user_id, scheduled)
            status = int(reply[0])
            if status == -1:
                raise NotFound("user_not_found", "no such user")
            if status == 0:
                return [int(code) for code in reply[1:]]
            key = None  # the server's key changed since this process read it: seal again
        raise StorageError("the server key kept changing while queueing")

    async def schedule(self, user_id: str, *, now: bool = False) -> None:
        """Make sure a delivery worker will look at this user (at once when `now`)."""
        score = time.time()
        if now:
            # A delivery in flight right now reads this flag and retries at once instead of backing off.
            await self._redis.set(self._keys.user_key(user_id, "ping"), b"1", ex=60)
            await self._redis.zadd(self._keys.due, {user_id: score})
            self._wake(user_id)
            await self._redis.publish(self._keys.wake_channel, user_id)
            return
        self._woken(user_id, await self._batch.call(self._schedule_call(user_id, score)))

    def _schedule_call(self, user_id: str, score: float) -> batching.Call:
        """Schedule unless already scheduled; the reply says whether it was added (then wake)."""
        return batching.script(self._schedule, [self._keys.due], [score, user_id, self._keys.wake_channel])

    def _woken(self, user_id: str, added: Any) -> None:
        # The script woke the other processes (PUBLISH); this one is woken directly.
        if int(added):
            self._wake(user_id)
