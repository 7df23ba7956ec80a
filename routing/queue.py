"""The one hand-over every channel uses: seal, then queue durably, in order, per user.

`Handoff.__call__` returns only after the sealed events are in the user's Redis
stream and the user is scheduled for delivery, so a channel may acknowledge its
provider as soon as it returns. Plaintext never leaves this function.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway import batching, metrics
from gateway.clock import iso_now
from gateway.errors import NotFound, StorageError
from gateway.types import Event, SealedEvent
from routing.keys import Keys
from routing.registry import Registry
from routing.sealing import seal

SEEN_WINDOW_MS = 7 * 24 * 3600 * 1000

# KEYS: stream, seen zset, counters, user record. ARGV: now_ms, window_ms, the server key the events
# were sealed to, then (dedup_id, envelope, channel) triples. A user that is gone or being erased gets
# nothing (-1): checked in the same atomic step as the write, so an erasure never races a late event
# back into Redis. Events sealed to a key that is no longer the user's are refused (-2) and sealed
# again by the caller: the key is cached per process, and this is where a stale copy is caught.
_ENQUEUE = """
local user = redis.call('HMGET', KEYS[4], 'server_url', 'erasing', 'server_public_key')
if not user[1] or user[2] then return -1 end
if user[3] ~= ARGV[3] then return -2 end
local added = 0
for i = 4, #ARGV, 3 do
  local dedup = ARGV[i]
  local fresh = true
  if dedup ~= '' then
    fresh = redis.call('ZADD', KEYS[2], 'NX', ARGV[1], dedup) == 1
  end
  if fresh then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1], 'c', ARGV[i + 2])
    added = added + 1
  end
end
if #ARGV > 3 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'events_in', added) end
return added
"""


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


class Handoff:
    def __init__(self, redis: Redis, keys: Keys, registry: Registry, wake: Callable[[str], None]) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._wake = wake
        self._enqueue = redis.register_script(_ENQUEUE)
        self._schedule = redis.register_script(_SCHEDULE)
        self._batch = batching.shared(redis)

    async def __call__(self, user_id: str, items: Sequence[Item], *, dedup_scope: str = "default") -> int:
        """Seal and durably queue `items` for `user_id`; return how many were new (not duplicates)."""
        if not items:
            return 0
        try:
            added = await self._enqueue_sealed(user_id, items, dedup_scope)
        except RedisError as exc:
            raise StorageError("could not queue event") from exc
        if added:
            metrics.EVENTS_IN.labels(items[0].event.channel).inc(added)
        return added

    async def _enqueue_sealed(self, user_id: str, items: Sequence[Item], dedup_scope: str) -> int:
        keys = [
            self._keys.queue(user_id),
            self._keys.seen(user_id, dedup_scope),
            self._keys.counters(user_id),
            self._keys.user(user_id),
        ]
        key = self._registry.cached_sealing_key(user_id)
        for _ in range(3):
            if key is None:
                key = await self._registry.sealing_key(user_id)
            raw, public_key = key
            received_at = iso_now()
            args: list[str | bytes | int] = [int(time.time() * 1000), SEEN_WINDOW_MS, raw]
            for item in items:
                event_id = new_id("evt")
                sealed = SealedEvent(
                    event_id,
                    item.event.type,
                    item.event.channel,
                    received_at,
                    seal(public_key, user_id, event_id, item.event.payload),
                )
                args += [item.dedup, orjson.dumps(sealed.as_json()), item.event.channel]
            # Queued and scheduled in one round trip: the two calls go out in this order on one
            # connection, so the schedule runs right after the write (also for duplicates: a retry
            # after a crash between the two must still schedule what the first attempt queued).
            # A refused write leaves a schedule that finds nothing to send.
            reply, scheduled = await self._batch.run(
                batching.script(self._enqueue, keys, args), self._schedule_call(user_id, time.time())
            )
            self._woken(user_id, scheduled)
            added = int(reply)
            if added == -1:
                raise NotFound("user_not_found", "no such user")
            if added >= 0:
                return added
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
