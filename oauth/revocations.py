"""Revocations still owed to a provider that was down when a user disconnected or was erased.

A record must survive the user's erasure (their data key is shredded), so the token is sealed
under the master key (`Vault.seal_global`) and the record is global and anonymous:
`{prefix}oauth:revoke:<random id>` (provider, sealed token, attempts, first attempt), scheduled in
the sorted set `{prefix}oauth:revocations` by next attempt time. Any worker may run `run_once`:
claiming moves an item's due time forward by a lease, so two workers never try it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from foundation import metrics
from foundation.errors import ProviderError, ProviderUnavailable, VaultError
from foundation.redis_keys import Keys
from foundation.vault import Vault

log = logging.getLogger(__name__)

GIVE_UP_AFTER = 7 * 24 * 3600
LEASE = 120.0

Revoke = Callable[[str, str], Awaitable[None]]
"""(provider, token) → revoked; raises ProviderUnavailable to be retried later."""

# KEYS[1]: schedule. ARGV: now, lease, batch. Claims due ids by pushing their due time past the lease.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return due
"""


class Revocations:
    def __init__(self, redis: Redis, keys: Keys, vault: Vault, revoke: Revoke, *, interval: float = 30.0) -> None:
        self._redis = redis
        self._keys = keys
        self._vault = vault
        self._revoke = revoke
        self.interval = interval
        self._claim = redis.register_script(_CLAIM)

    @property
    def schedule_key(self) -> str:
        return self._keys.global_key("oauth:revocations")

    def _record(self, rid: str) -> str:
        return self._keys.global_key(f"oauth:revoke:{rid}")

    async def add(self, provider: str, token: str, *, delay: float = 30.0) -> str:
        rid = os.urandom(12).hex()
        sealed = self._vault.seal_global(("revocation", rid), token.encode())
        now = time.time()
        await self._redis.hset(
            self._record(rid), mapping={"provider": provider, "token": sealed, "attempts": 0, "first_at": repr(now)}
        )
        await self._redis.zadd(self.schedule_key, {rid: now + delay})
        metrics.REVOCATIONS.labels(provider, "deferred").inc()
        log.warning("revocation deferred; it is retried in the background", extra={"provider": provider})
        return rid

    async def pending(self) -> int:
        return int(await self._redis.zcard(self.schedule_key))

    async def run_once(self, *, now: float | None = None) -> int:
        """Try every due revocation once; return how many are finished (revoked or given up)."""
        now = time.time() if now is None else now
        claimed = await self._claim(keys=[self.schedule_key], args=[now, LEASE, 50])
        done = 0
        for raw in claimed:
            done += await self._attempt(raw.decode(), now)
        return done

    async def _attempt(self, rid: str, now: float) -> int:
        record = await self._redis.hgetall(self._record(rid))
        if not record:
            await self._redis.zrem(self.schedule_key, rid)
            return 1
        provider = record[b"provider"].decode()
        attempts = int(record.get(b"attempts", b"0")) + 1
        try:
            token = self._vault.open_global(("revocation", rid), record[b"token"]).decode()
            await self._revoke(provider, token)
        except ProviderUnavailable:
            if now - float(record.get(b"first_at", b"0")) > GIVE_UP_AFTER:
                return await self._finish(rid, provider, "given_up")
            backoff = min(3600.0, 30.0 * 2 ** min(attempts, 10))
            await self._redis.hset(self._record(rid), "attempts", attempts)
            await self._redis.zadd(self.schedule_key, {rid: now + backoff})
            return 0
        except (ProviderError, VaultError) as exc:
            log.warning("revocation cannot succeed; dropped", extra={"provider": provider, "error": type(exc).__name__})
            return await self._finish(rid, provider, "failed")
        return await self._finish(rid, provider, "revoked")

    async def _finish(self, rid: str, provider: str, outcome: str) -> int:
        await self._redis.delete(self._record(rid))
        await self._redis.zrem(self.schedule_key, rid)
        metrics.REVOCATIONS.labels(provider, outcome).inc()
        return 1

    async def run(self) -> None:
        """The worker loop (`services.loops["oauth-revocations"]`)."""
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)
