"""Erasure (contract §7): channels' erase hooks, then every key of the user, data key included.

An erasure is recorded in `{prefix}erasing` before it starts, so a process that dies
half-way leaves it to be finished by the next worker (`resume`). Hooks must be
idempotent: they may run again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from routing.keys import Keys

log = logging.getLogger(__name__)

EraseHook = Any  # Callable[[str], Awaitable[None]]; kept loose to avoid importing services


class Eraser:
    def __init__(self, redis: Redis, keys: Keys, hooks: Mapping[str, EraseHook]) -> None:
        self._redis = redis
        self._keys = keys
        self._hooks = hooks
        self._running: dict[str, asyncio.Task[None]] = {}

    async def is_erasing(self, user_id: str) -> bool:
        return bool(await self._redis.sismember(self._keys.global_key("erasing"), user_id))

    async def start(self, user_id: str) -> None:
        """Record the erasure durably, then run it in the background."""
        await self._redis.sadd(self._keys.global_key("erasing"), user_id)
        # No new events for this user from now on: the delivery schedule forgets them first.
        await self._redis.zrem(self._keys.due, user_id)
        self._spawn(user_id)

    def _spawn(self, user_id: str) -> None:
        if user_id in self._running:
            return
        task = asyncio.create_task(self._run(user_id), name=f"erase-{user_id}")
        self._running[user_id] = task
        task.add_done_callback(lambda _t: self._running.pop(user_id, None))

    async def resume(self) -> int:
        pending = [m.decode() for m in await self._redis.smembers(self._keys.global_key("erasing"))]
        for user_id in pending:
            self._spawn(user_id)
        return len(pending)

    async def wait(self, user_id: str) -> None:
        task = self._running.get(user_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, user_id: str) -> None:
        for name, hook in self._hooks.items():
            try:
                await hook(user_id)
            except Exception:
                # A provider being down must not stop the local erasure; hooks record their own retries.
                log.exception("erase hook failed; local erasure continues", extra={"hook": name})
        try:
            await self.delete_user_keys(user_id)
            await self._redis.zrem(self._keys.due, user_id)
            await self._redis.srem(self._keys.users, user_id)
            await self._redis.srem(self._keys.global_key("erasing"), user_id)
            log.info("user erased")
        except RedisError as exc:
            log.warning("erasure interrupted; it resumes on the next start", extra={"error": type(exc).__name__})

    async def delete_user_keys(self, user_id: str) -> int:
        pattern = self._keys.user_pattern(user_id)
        deleted = 0
        batch: list[bytes] = []
        # All keys of the user share one hash slot, so one DEL may take many of them (cluster too).
        async for key in self._redis.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await self._redis.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(await self._redis.delete(*batch))
        return deleted

    async def aclose(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
