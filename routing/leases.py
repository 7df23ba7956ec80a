"""Who serves a user right now: the `{u:<id>}:lease` key, held by one delivery worker at a
time and expiring if that worker dies, so another takes over. This module is the only one
that writes it: the transaction store's open script takes or extends it and its acknowledgement
gives it up when nothing is left, through the Lua functions defined here.
"""

from __future__ import annotations

import contextlib
import os
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import batching
from foundation.redis_keys import Keys

# Lua functions for the scripts that take, hold and give up a lease in the same atomic step as
# their own work (the transaction store's open and acknowledge scripts).
# `lease_hold`: true when `owner` holds the lease now, extended to `ms`; taken first when free and
# `take` is '1'. `lease_release`: gives it up if `owner` still holds it.
LEASE_FUNCTIONS = """
local function lease_hold(key, owner, ms, take)
  local holder = redis.call('GET', key)
  if not holder and take == '1' then
    redis.call('SET', key, owner, 'PX', ms)
    return true
  end
  if holder ~= owner then return false end
  redis.call('PEXPIRE', key, ms)
  return true
end
local function lease_release(key, owner)
  if redis.call('GET', key) == owner then redis.call('DEL', key) end
end
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, queue, txn, overflow record. ARGV: owner. Releases the lease only when there is
# nothing left to do (empty queue, no transaction, no overflow to report); returns 1 when there
# is, and the lease is kept.
_RELEASE_IF_IDLE = """
if redis.call('XLEN', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[3]) + redis.call('EXISTS', KEYS[4]) > 0 then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """The leases of one worker (`owner`), each `lease` seconds long."""

    def __init__(self, redis: Redis, keys: Keys, *, lease: float) -> None:
        self._redis = redis
        self._keys = keys
        self.owner = f"{os.getpid()}-{os.urandom(6).hex()}"
        self.ms = int(lease * 1000)
        self._release = redis.register_script(_RELEASE)
        self._release_if_idle = redis.register_script(_RELEASE_IF_IDLE)
        self._batch = batching.shared(redis)

    def placeholder_call(self, user_id: str, *, only_if_due: bool) -> batching.Call:
        """Set the user's due time to when this lease could lapse (`placeholder_due`), so that no
        other worker looks at the user before then; `only_if_due`: unless it left `due` meanwhile."""
        xx = ("XX",) if only_if_due else ()
        return batching.command("ZADD", self._keys.due, *xx, self.placeholder_due(), user_id)

    async def mark_served(self, user_id: str) -> None:
        """`placeholder_call` for a user this worker just claimed, unless it left `due`. Only spares
        other workers futile claims, so a failure is not an error."""
        with contextlib.suppress(RedisError, OSError):
            await self._batch.call(self.placeholder_call(user_id, only_if_due=True))

    def leave_due_call(self, user_id: str) -> batching.Call:
        """Out of `due`: sent before a last look that may give the lease up (see `release_if_idle`)."""
        return batching.command("ZREM", self._keys.due, user_id)

    async def release_if_idle(self, user_id: str) -> bool:
        """Leave `due`, then release the lease if there is nothing left to do; True when there is
        (an event queued after the last look put the user back into `due` itself: its ZADD NX
        found no entry). Both in one round trip, in this order."""
        _, busy = await self._batch.run(
            self.leave_due_call(user_id),
            batching.script(
                self._release_if_idle,
                [
                    self._keys.lease(user_id),
                    self._keys.queue(user_id),
                    self._keys.txn(user_id),
                    self._keys.overflow(user_id),
                ],
                [self.owner],
            ),
        )
        return bool(busy)

    async def release(self, user_id: str) -> bool:
        """Give the lease up if it is still ours; True when it was."""
        return bool(await self._release(keys=[self._keys.lease(user_id)], args=[self.owner]))

    def placeholder_due(self) -> float:
        """The due time of a user being served: when its lease could have lapsed."""
        return time.time() + self.ms / 1000
