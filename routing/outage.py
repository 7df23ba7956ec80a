"""A user's server outage, as far as the people who write to it need to know (contract §9.4).

Keys, all under the user's tag (so every script runs on Redis Cluster, and erasure takes them):
- `{u:<id>}:outage`: epoch seconds of the first failed delivery since the last acknowledged one.
  The delivery worker starts it (`failed`); it is over once the counters' `last_ok_at`, written
  by the acknowledgement itself, is later. A success therefore costs no extra write.
- `{u:<id>}:outage:told`: the reply addresses already told of this outage. Set-if-absent, so one
  notice per address per outage however many processes see its messages; deleted when a new
  outage starts or when the outage is found over.
- `{u:<id>}:held`: where held events came from: members `<channel>|<address>|<ref>` scored with
  the time (ms) their hand-over began, which is never later than the event's stream id. Entries
  older than the last acknowledgement count as delivered and are dropped; when events expire,
  the entries below the cutoff are reported per address (the `expired` hooks) and dropped.

An address is a channel's own reply address (a Telegram chat id) and a ref names the provider's
message (an update id): nothing of what anyone wrote is kept, and every key expires with the
hold TTL at the latest.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import user_fields
from foundation.redis_keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a written event came from: a channel's reply address (a Telegram chat id) and the
    provider's message (an update id), and after how long an outage is worth a notice (0: never)."""

    channel: str
    address: str
    ref: str
    notice_after: float


ExpiredHook = Callable[[str, dict[str, int]], Awaitable[None]]
"""Told `(user_id, {address: events of that address that expired})`."""

# A user that is gone or being erased gets no key written (as in the hand-over): an erasure
# that already deleted the user's keys must not find new ones appear after it.
_ACTIVE = user_fields.lua("""
local user = redis.call('HMGET', KEYS[#KEYS], @server_url, @erasing)
if not user[1] or user[2] then return 0 end
""")
# KEYS: outage, told, counters, user. ARGV: now (s). Starts an outage unless one is going on.
_FAILED = (
    _ACTIVE
    + """
local since = tonumber(redis.call('GET', KEYS[1]) or '0')
local ok = tonumber(redis.call('HGET', KEYS[3], 'last_ok_at') or '0')
if since > 0 and since > ok then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
)
# The bookkeeping of one written event, as a Lua function the hand-over's own script also calls
# (so a chat's message is queued and recorded in one atomic step, one round trip). Keys: outage,
# told, held, counters. Arguments: now (s), notice after (s, 0 = never), told member, held member,
# hand-over start (ms), keep (s). Records where the event came from, then answers 1 when this
# address is to be told of the outage now (and marks it told), else 0.
WROTE_FUNCTION = """
local function outage_wrote(outage, told, held, counters, now, after, told_member, held_member, handed_ms, keep)
  local ok = tonumber(redis.call('HGET', counters, 'last_ok_at') or '0')
  local ok_ms = math.floor(ok * 1000)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', '(' .. ok_ms)
  if tonumber(handed_ms) >= ok_ms then
    redis.call('ZADD', held, 'NX', handed_ms, held_member)
    redis.call('EXPIRE', held, keep)
  end
  local since = tonumber(redis.call('GET', outage) or '0')
  if since == 0 then return 0 end
  if since <= ok then
    redis.call('DEL', outage, told)
    return 0
  end
  after = tonumber(after)
  if after <= 0 or tonumber(now) - since < after then return 0 end
  local fresh = redis.call('SADD', told, told_member)
  redis.call('EXPIRE', told, keep)
  return fresh
end
"""
# KEYS: held, counters. ARGV: cutoff (ms), most. Takes the entries of events that expired.
_EXPIRED = """
local ok_ms = math.floor(tonumber(redis.call('HGET', KEYS[2], 'last_ok_at') or '0') * 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ok_ms)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return gone
"""


class Outages:
    def __init__(
        self, redis: Redis, keys: Keys, *, hold_ttl: float, expired: Mapping[str, ExpiredHook] = MappingProxyType({})
    ) -> None:
        """`expired[channel]` is told, per address, how many of the channel's recorded events expired."""
        self._keys = keys
        # The bookkeeping outlives the events it is about by a margin, never much longer.
        self._keep = int(hold_ttl) + 3600
        self._hooks = expired
        self._failed = redis.register_script(_FAILED)
        self._expired = redis.register_script(_EXPIRED)

    def _key(self, user_id: str, name: str) -> str:
        return self._keys.user_key(user_id, name)

    async def failed(self, user_id: str) -> None:
        """A delivery to the user's server failed: the outage starts now unless one is going on."""
        keys = [
            self._key(user_id, "outage"),
            self._key(user_id, "outage:told"),
            self._keys.counters(user_id),
            self._keys.user(user_id),
        ]
        try:
            await self._failed(keys=keys, args=[repr(time.time())])
        except RedisError as exc:
            # Only a notice can come late because of this; the delivery's own retry is unaffected.
            log.warning("could not record the outage", extra={"error": type(exc).__name__})

    def wrote_keys(self, user_id: str) -> list[str]:
        """The keys `outage_wrote` takes (outage, told, held, counters), in its order."""
        return [
            self._key(user_id, "outage"),
            self._key(user_id, "outage:told"),
            self._key(user_id, "held"),
            self._keys.counters(user_id),
        ]

    def wrote_args(self, origin: Origin, handed_ms: int) -> list[str | int]:
        """The arguments `outage_wrote` takes after its keys, for an event from `origin`."""
        told = f"{origin.channel}|{origin.address}"
        return [repr(time.time()), repr(origin.notice_after), told, f"{told}|{origin.ref}", handed_ms, self._keep]

    async def expired(self, user_id: str, count: int, cutoff_ms: int) -> None:
        """`count` held events older than `cutoff_ms` were dropped: tell each channel where the
        ones it recorded came from. Never raises: a notice must not hold up a delivery."""
        try:
            keys = [self._key(user_id, "held"), self._keys.counters(user_id)]
            gone = await self._expired(keys=keys, args=[cutoff_ms, count])
        except RedisError as exc:
            log.warning("could not read where expired events came from", extra={"error": type(exc).__name__})
            return
        by_channel: dict[str, Counter[str]] = {}
        for raw in gone:
            channel, address, _ref = raw.decode().split("|", 2)
            by_channel.setdefault(channel, Counter())[address] += 1
        for channel, counts in by_channel.items():
            hook = self._hooks.get(channel)
            if hook is None:
                continue
            try:
                await hook(user_id, dict(counts))
            except Exception:
                log.exception("expiry notice failed", extra={"channel": channel})
