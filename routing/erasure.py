"""Erasure (contract §7): the channels' erase hooks, then every key of the user, data key first.

An erasure is recorded in the global hash `{prefix}erasures` (field: user id, value: its
progress as JSON) before anything else happens, and the user's record is marked
`erasing`, which stops new events from being queued. It then runs in the background
of the process that started it, holding a short lease (`{prefix}erasing:<id>`) that it
renews; if that process dies, any worker-role process finds the record with no live
lease and finishes it (`watch`). Every step is idempotent, so running one twice is safe.

Steps, in order:
1. hooks     — each channel and provider cleans up its own state (revoke grants, delete
               watches and subscriptions, unlink chats, drop global mappings). A hook that
               fails (a provider is down) is recorded and the local erasure goes on; a hook
               records its own retry of the remote part.
2. delivery  — take the user's delivery lease, so no transaction is in flight and none starts.
3. keys      — delete the user record (no handoff succeeds after this) with the data key it
               holds (crypto-shredding: every ciphertext of the user is unreadable from here on),
               then every key under the user's hash tag; then the user's entries in global sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import batching, user_fields
from foundation.clock import iso_now
from foundation.compaction import Compactor
from foundation.logs import bound_request_id, new_request_id
from foundation.redis_keys import Keys

log = logging.getLogger(__name__)

EraseHook = Callable[[str], Awaitable[None]]

LEASE = 6.0
"""Seconds an erasure's owner may go silent before another process takes it over."""
HOOK_TIMEOUT = 60.0
WATCH_EVERY = 3.0
DELETE_BATCH = 500

# Renew or release the erasure lease only while we still own it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Mark the user record only if it exists: never create a record for a user that is gone.
_MARK = user_fields.lua("""
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], @erasing, '1') end
return 0
""")
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Eraser:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        hooks: Mapping[str, EraseHook],
        *,
        delivery_wait: float = 35.0,
        compactor: Compactor | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._hooks = hooks
        self._delivery_wait = delivery_wait
        self._compactor = compactor
        self._owner = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._mark = redis.register_script(_MARK)
        self._batch = batching.shared(redis)

    @property
    def _records(self) -> str:
        return self._keys.global_key("erasures")

    @property
    def _finished(self) -> str:
        return self._keys.global_key("erasures:finished")

    async def finished(self) -> dict[str, int]:
        """Erasures finished so far by outcome, by every process (a CLI erasure included)."""
        raw = await self._redis.hgetall(self._finished)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def is_erasing(self, user_id: str) -> bool:
        return bool(await self._redis.hexists(self._records, user_id))

    async def progress(self, user_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(self._records, user_id)
        return dict(orjson.loads(raw)) if raw is not None else None

    async def start(self, user_id: str) -> dict[str, Any]:
        """Record the erasure durably and run it in the background; joining one already running."""
        record = {"started_at": iso_now(), "step": "hooks", "hooks": {}}
        # Durable: `202` tells the operator the erasure will happen, whichever node survives.
        # From here on the user is gone for every caller; handoff refuses a user marked erasing.
        await self._batch.run(
            batching.command("HSETNX", self._records, user_id, orjson.dumps(record), durable=True, key=self._records),
            batching.script(self._mark, [self._keys.user(user_id)], [], durable=True),
        )
        self._spawn(user_id)
        return await self.progress(user_id) or record

    def _spawn(self, user_id: str) -> None:
        if user_id in self._running or self._closed:
            return
        # Its log lines share one id, so an operator can follow one erasure from start to end.
        with bound_request_id(new_request_id("era")):
            task = asyncio.create_task(self._run(user_id), name=f"erase-{user_id}")
        self._running[user_id] = task
        task.add_done_callback(lambda _t: self._running.pop(user_id, None))

    async def resume(self) -> int:
        """Take over every recorded erasure whose owner is gone; return how many were started."""
        started = 0
        for raw in await self._redis.hkeys(self._records):
            user_id = raw.decode()
            if user_id not in self._running and not await self._redis.exists(self._keys.erasing(user_id)):
                self._spawn(user_id)
                started += 1
        return started

    async def watch(self) -> None:
        """Background loop (worker role): finish erasures whose process died."""
        while not self._closed:
            try:
                resumed = await self.resume()
                if resumed:
                    log.info("resumed interrupted erasures", extra={"count": resumed})
            except RedisError as exc:
                log.warning("erasure watch: redis unavailable", extra={"error": type(exc).__name__})
            await self._compact()
            await asyncio.sleep(WATCH_EVERY)

    async def _compact(self, *, erased: bool = False) -> None:
        """Ask for the AOF rewrite that takes erased users out of its history (foundation.compaction)."""
        if self._compactor is None:
            return
        try:
            if erased:
                await self._compactor.erased()
            await self._compactor.run_due()
        except RedisError as exc:
            log.warning("AOF compaction not asked for; retried later", extra={"error": type(exc).__name__})

    async def wait(self, user_id: str) -> None:
        task = self._running.get(user_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, user_id: str) -> None:
        lease_key = self._keys.erasing(user_id)
        try:
            if not await self._redis.set(lease_key, self._owner, nx=True, px=int(LEASE * 1000)):
                return  # another process is on it
            renewer = asyncio.create_task(self._keep_lease(lease_key))
            try:
                await self._erase(user_id)
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                with contextlib.suppress(RedisError):
                    await self._release(keys=[lease_key], args=[self._owner])
            # After the lease is gone too: a rewrite forked earlier would keep its key (the user id).
            await self._compact(erased=True)
        except RedisError as exc:
            log.warning("erasure interrupted; it resumes later", extra={"error": type(exc).__name__})

    async def _keep_lease(self, lease_key: str) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            with contextlib.suppress(RedisError):
                await self._renew(keys=[lease_key], args=[self._owner, int(LEASE * 1000)])

    async def _note(self, user_id: str, record: dict[str, Any]) -> None:
        await self._redis.hset(self._records, user_id, orjson.dumps(record))

    async def _erase(self, user_id: str) -> None:
        record = await self.progress(user_id)
        if record is None:
            return  # finished meanwhile
        started = time.monotonic()
        log.info("erasure running", extra={"step": record.get("step")})
        hooks: dict[str, Any] = record.setdefault("hooks", {})
        for name, hook in self._hooks.items():
            if hooks.get(name) == "done":
                continue
            hooks[name] = await self._run_hook(name, hook, user_id)
            await self._note(user_id, record)
        record["step"] = "delivery"
        await self._note(user_id, record)
        exclusive = await self._stop_delivery(user_id)
        record["step"] = "keys"
        await self._note(user_id, record)
        deleted = await self.delete_user_keys(user_id)
        if not exclusive:
            # A worker we could not wait out may still write once more when its attempt ends.
            await asyncio.sleep(self._delivery_wait)
            deleted += await self.delete_user_keys(user_id)
        await self._redis.zrem(self._keys.due, user_id)
        await self._redis.srem(self._keys.users, user_id)
        await self._redis.hdel(self._records, user_id)
        failed = sorted(n for n, outcome in hooks.items() if outcome != "done")
        # Counted in Redis: the process that finished it may be a CLI command that exits at once.
        await self._redis.hincrby(self._finished, "hooks_failed" if failed else "complete", 1)
        log.info(
            "user erased",
            extra={"keys_deleted": deleted, "hooks_failed": failed, "seconds": round(time.monotonic() - started, 3)},
        )

    async def _run_hook(self, name: str, hook: EraseHook, user_id: str) -> str:
        try:
            await asyncio.wait_for(hook(user_id), HOOK_TIMEOUT)
            return "done"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A provider being down must not stop the local erasure; hooks record their own retries.
            log.warning("erase hook failed; local erasure continues", extra={"hook": name, "error": type(exc).__name__})
            return "failed"

    async def _stop_delivery(self, user_id: str) -> bool:
        """Hold the user's delivery lease: no transaction in flight, none started until the keys are gone."""
        await self._redis.zrem(self._keys.due, user_id)
        deadline = time.monotonic() + self._delivery_wait
        lease = self._keys.lease(user_id)
        while time.monotonic() < deadline:
            if await self._redis.set(lease, f"erasure-{self._owner}", nx=True, px=int(self._delivery_wait * 1000)):
                return True
            await asyncio.sleep(0.2)
        log.warning("delivery lease not released in time; erasing anyway")
        return False

    async def delete_user_keys(self, user_id: str) -> int:
        # The record first: it holds the data key, and handoff and the vault refuse a user without
        # one. Then the data key of a user stored by an older version, which kept it on its own.
        deleted = int(await self._redis.delete(self._keys.user(user_id)))
        deleted += int(await self._redis.delete(self._keys.dek(user_id)))
        batch: list[bytes] = []
        # All keys of the user share one hash slot, so one DEL may take many of them (cluster too).
        async for key in self._redis.scan_iter(match=self._keys.user_pattern(user_id), count=DELETE_BATCH):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                deleted += int(await self._redis.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(await self._redis.delete(*batch))
        return deleted

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
