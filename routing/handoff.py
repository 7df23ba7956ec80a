"""The one hand-over every channel uses: seal, then queue durably, in order, per user.

`Handoff.__call__` returns only after the sealed events are in the user's Redis
stream and the user is scheduled for delivery, so a channel may acknowledge its
provider as soon as it returns. Plaintext never leaves this function.
"""

from __future__ import annotations

import logging
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
from foundation.randomness import hex_token
from foundation.redis_keys import Keys
from foundation.types import Event, SealedEvent
from routing.outage import WROTE_FUNCTION, Origin, Outages
from routing.registry import Registry
from routing.sealing import seal

log = logging.getLogger(__name__)

SEEN_WINDOW_MS = 7 * 24 * 3600 * 1000
"""How long a scope's dedup ids are kept unless its channel says less (`Handoff.keep_seen`)."""
SEEN_PER_EVENT_CAP = 2
"""The dedup set of one scope keeps at most this many ids per event the queue may hold."""

QUEUED, DUPLICATE, DROPPED = 1, 0, 2

# KEYS: stream, seen zset, counters, user record, queued bytes, overflow record, the hash that must
# hold ARGV[7] (when ARGV[7] ~= ''), then the outage tracker's keys (outage, told, held, counters).
# ARGV: now_ms, window_ms, the server key the events were sealed to, max events, max bytes, max
# seen ids, the field that must exist ('' for no check), the origin's outage arguments (six, the
# first '' for none: see `routing/outage.py`), then (dedup_id, envelope, channel) triples.
# Replies {-1} when the user is gone or being erased: checked in the same atomic step as the
# write, so an erasure never races a late event back into Redis. Events sealed to a key that is
# no longer the user's are refused ({-2}) and sealed again by the caller: the key is cached per
# process, and this is where a stale copy is caught. {-3}: the required field is gone (a Telegram
# chat no longer linked to this user: the caller's cached owner was stale). Otherwise
# {0, told, code per item}: told is 1 when the origin is to be told of the user's outage now (see
# `outage_wrote`); each code QUEUED, DUPLICATE, or DROPPED because the queue is at a cap (§9.2).
# What is kept stays the oldest; a dropped event leaves no dedup id behind (a redelivery is
# dropped again or, once there is room, queued) and is counted in the overflow record, which the
# delivery worker turns into one `gateway.overflow` event once the queue has room again.
_ENQUEUE = user_fields.lua(
    WROTE_FUNCTION
    + """
local user = redis.call('HMGET', KEYS[4], @server_url, @erasing, @server_public_key)
if not user[1] or user[2] then return {-1} end
if user[3] ~= ARGV[3] then return {-2} end
if ARGV[7] ~= '' and redis.call('HEXISTS', KEYS[7], ARGV[7]) == 0 then return {-3} end
local count = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[5]) or '0')
local max_events, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local codes, added, added_bytes, dropped = {0, 0}, 0, 0, 0
for i = 14, #ARGV, 3 do
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
-- A repeat is not recorded again: the first delivery of it was (or found no outage then).
if ARGV[8] ~= '' and added + dropped > 0 then
  codes[2] = outage_wrote(KEYS[8], KEYS[9], KEYS[10], KEYS[11], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
    ARGV[12], ARGV[13])
end
-- The PEXPIRE below is a write even when every item was a duplicate: a provider's retry after a
-- 503 (its first attempt written, not yet replicated) must not be acknowledged on a WAIT that
-- only covers this connection's older writes; WAIT counts from the connection's last write.
if #ARGV > 13 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return codes
"""
)


# KEYS: due. ARGV: score, user_id, wake channel, '1' to wake the other processes. One key, so it
# runs on Redis Cluster too.
_SCHEDULE = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) == 1 then
  if ARGV[4] == '1' then redis.call('PUBLISH', ARGV[3], ARGV[2]) end
  return 1
end
return 0
"""


def new_id(prefix: str) -> str:
    """Time-ordered, unguessable id: prefix + 10 hex of ms time + 14 hex random (under 32 chars)."""
    return f"{prefix}_{int(time.time() * 1000):010x}{hex_token(7)}"


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


@dataclass(frozen=True, slots=True)
class Linked:
    """A condition checked in the hand-over's own atomic step: the field `field` of the user's
    key `name` (`Keys.user_key`) exists. A channel that routes by a cached owner passes it, so
    a stale cache entry queues nothing (`NotLinked`)."""

    name: str
    field: str


class NotLinked(Exception):
    """The `Linked` condition did not hold: nothing was queued."""


@dataclass(frozen=True, slots=True)
class HandedOver:
    new: int
    """Items that were not repeats (queued, or dropped at a cap and reported later)."""
    tell: bool = False
    """The origin is to be told now that the user's server is away (`outage.WROTE_FUNCTION`)."""


_NO_ORIGIN: list[str | int] = ["", "", "", "", "", ""]


class Handoff:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        wake: Callable[[str], None],
        caps: Caps = DEFAULT_CAPS,
        outages: Outages | None = None,
        *,
        wake_others: bool = True,
        adopt: Callable[[str], batching.Rider | None] | None = None,
    ) -> None:
        """`wake`: this process's delivery worker, told of each user this hand-over scheduled.
        `wake_others`: also wake every other process's worker (pub/sub); needed only when this
        process runs no delivery worker (the others then find the user in `due` within a poll).
        `adopt`: this process's delivery worker, asked to serve the user from a first open sent
        in the hand-over's own round trip (`DeliveryWorker.adopt`)."""
        self._wake_others = "1" if wake_others else "0"
        self._adopt = adopt
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._wake = wake
        self._caps = caps
        self._outages = outages
        self._windows: dict[str, int] = {}
        self._enqueue = redis.register_script(_ENQUEUE)
        self._schedule = redis.register_script(_SCHEDULE)
        self._batch = batching.shared(redis)

    def keep_seen(self, scope: str, window_ms: int) -> None:
        """Keep the dedup ids of `scope` (and of every `scope:...`) `window_ms` instead of
        `SEEN_WINDOW_MS`: for a provider that never sends a message again after that long."""
        self._windows[scope] = window_ms

    async def __call__(self, user_id: str, items: Sequence[Item], *, dedup_scope: str = "default") -> int:
        """Seal and durably queue `items` for `user_id`; return how many were new (not duplicates).

        New events that find the queue at a cap count as new: they are dropped, counted, and
        reported to the server later (contract §9.2); the provider is acknowledged either way."""
        return (await self.hand_over(user_id, items, dedup_scope=dedup_scope)).new

    async def hand_over(
        self,
        user_id: str,
        items: Sequence[Item],
        *,
        dedup_scope: str = "default",
        linked: Linked | None = None,
        origin: Origin | None = None,
    ) -> HandedOver:
        """As `__call__`, in the same one round trip: only while `linked` holds (else `NotLinked`),
        and, when new items came from `origin`, recorded for the outage notices (`outage.WROTE_FUNCTION`)."""
        if not items:
            return HandedOver(0)
        try:
            told, codes = await self._enqueue_sealed(user_id, items, dedup_scope, linked, origin)
        except RedisError as exc:
            raise StorageError("could not queue event") from exc
        for item, code in zip(items, codes, strict=True):
            channel = item.event.channel
            if code == QUEUED:
                metrics.child(metrics.EVENTS_IN, channel).inc()
            elif code == DUPLICATE:
                metrics.child(metrics.DROPPED, channel, "duplicate").inc()
                log.debug("duplicate dropped", extra={"channel": channel, "scope": dedup_scope})
            else:
                metrics.DROPPED.labels(channel, "queue_full").inc()
        if DROPPED in codes:
            log.info("queue full: new events dropped", extra={"user_id": user_id, "count": codes.count(DROPPED)})
        return HandedOver(sum(1 for code in codes if code != DUPLICATE), told)

    def _script_keys(self, user_id: str, dedup_scope: str, linked: Linked | None) -> list[str]:
        keys = [
            self._keys.queue(user_id),
            self._keys.seen(user_id, dedup_scope),
            self._keys.counters(user_id),
            self._keys.user(user_id),
            self._keys.queue_bytes(user_id),
            self._keys.overflow(user_id),
            # Unused unless `linked`, and then read by name: one more key of the same slot.
            self._keys.user_key(user_id, linked.name) if linked is not None else self._keys.user(user_id),
        ]
        if self._outages is not None:
            keys += self._outages.wrote_keys(user_id)
        else:
            keys += [self._keys.counters(user_id)] * 4
        return keys

    async def _enqueue_sealed(
        self, user_id: str, items: Sequence[Item], dedup_scope: str, linked: Linked | None, origin: Origin | None
    ) -> tuple[bool, list[int]]:
        keys = self._script_keys(user_id, dedup_scope, linked)
        caps = self._caps
        window_ms = self._windows.get(dedup_scope.partition(":")[0], SEEN_WINDOW_MS)
        key = self._registry.cached_sealing_key(user_id)
        for attempt in range(3):
            if key is None:
                key = await self._registry.sealing_key(user_id)
            raw, public_key = key
            received_at = iso_now()
            now_ms = int(time.time() * 1000)
            origin_args = _NO_ORIGIN
            if origin is not None and self._outages is not None:
                origin_args = self._outages.wrote_args(origin, now_ms)
            args: list[str | bytes | int] = [
                now_ms,
                window_ms,
                raw,
                caps.events,
                caps.bytes,
                caps.events * SEEN_PER_EVENT_CAP,
                linked.field if linked is not None else "",
                *origin_args,
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
            calls = [
                batching.script(self._enqueue, keys, args, durable=True),
                self._schedule_call(user_id, time.time()),
            ]
            # The user's first open rides in the same round trip when this process's worker can
            # take the user now: the event costs no wake-up and no round trip of its own to start.
            rider = self._adopt(user_id) if self._adopt is not None and attempt == 0 else None
            replies: list[Any] = []
            try:
                replies = await self._batch.run_each(*calls, *([rider.call] if rider is not None else []))
            finally:
                if rider is not None:
                    rider.settle(replies[2] if replies else StorageError("the hand-over was interrupted"))
            reply, scheduled = replies[0], replies[1]
            for answer in (reply, scheduled):
                if isinstance(answer, Exception):
                    raise answer
            if rider is None:
                self._woken(user_id, scheduled)
            status = int(reply[0])
            if status == -1:
                raise NotFound("user_not_found", "no such user")
            if status == -3:
                raise NotLinked
            if status == 0:
                return bool(int(reply[1])), [int(code) for code in reply[2:]]
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
        if self._wake_others == "0":
            # Nobody to wake: a plain ZADD NX answers the same (1 when added).
            return batching.command("ZADD", self._keys.due, "NX", score, user_id)
        args = [score, user_id, self._keys.wake_channel, self._wake_others]
        return batching.script(self._schedule, [self._keys.due], args)

    def _woken(self, user_id: str, added: Any) -> None:
        # This process's worker is woken directly (the script may have woken the others).
        if int(added):
            self._wake(user_id)
