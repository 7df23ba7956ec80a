"""Compacting Redis's append-only file once erasures have finished.

Deleting a user's keys appends `DEL`s to the AOF; the user's id, chat ids, account addresses
and wrapped data key stay in the file's history until Redis rewrites it, which it does on its
own only when the file has grown enough. So a finished erasure asks for `BGREWRITEAOF`, at most
once per `ALLY_AOF_REWRITE_INTERVAL` across all processes (a rewrite rereads the whole data
set). On a cluster every node rewrites, replicas included: they hold the same history.

Managed Redis services often refuse the command; that is logged once, recorded for `doctor`,
and otherwise harmless. Outcomes are kept in the global hash `{prefix}aof`: `pending` (erasures
finished since the last rewrite began), `last_at`, `last_outcome` (`rewriting`, `refused`,
`aof_off`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


class Compactor:
    def __init__(self, redis: Redis, status_key: str, gate_key: str, *, interval: float) -> None:
        self._redis = redis
        self._status = status_key
        self._gate = gate_key
        self._interval_ms = int(interval * 1000)
        self._refused_logged = False

    async def erased(self) -> None:
        """An erasure finished: its user is in the AOF's history until the next rewrite."""
        await self._redis.hincrby(self._status, "pending", 1)

    async def run_due(self) -> str | None:
        """Rewrite the AOF if an erasure is waiting for it and none was started within the
        interval; the outcome, or None when nothing was done."""
        pending = int(await self._redis.hget(self._status, "pending") or 0)
        if pending <= 0 or not await self._redis.set(self._gate, b"1", nx=True, px=self._interval_ms):
            return None
        outcome = await self._rewrite()
        if outcome == "busy":
            # One already running may have forked before the erasure: ask again next time.
            await self._redis.delete(self._gate)
            return None
        # Erasures that finished while this began stay pending for the next rewrite.
        await self._redis.hincrby(self._status, "pending", -pending)
        await self._redis.hset(self._status, mapping={"last_at": repr(time.time()), "last_outcome": outcome})
        return outcome

    async def _rewrite(self) -> str:
        try:
            if not await self._aof_on():
                return "aof_off"
            if isinstance(self._redis, RedisCluster):
                await self._redis.bgrewriteaof(target_nodes=RedisCluster.ALL_NODES)
            else:
                await self._redis.bgrewriteaof()
        except ResponseError as exc:
            if "already in progress" in str(exc):
                return "busy"
            if not self._refused_logged:
                self._refused_logged = True
                log.warning("BGREWRITEAOF refused; erased users stay in the AOF history", extra={"error": str(exc)})
            return "refused"
        log.info("AOF rewrite started after erasures")
        return "rewriting"

    async def _aof_on(self) -> bool:
        reply: Any = await self._redis.info("persistence")
        nodes = reply.values() if reply and all(isinstance(v, dict) for v in reply.values()) else [reply]
        return any(int(node.get("aof_enabled", 0)) for node in nodes)
