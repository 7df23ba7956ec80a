"""Long polling (`ALLY_TELEGRAM_MODE=polling`): `getUpdates` where Telegram cannot reach the gateway.

Exactly one process polls: the one holding a Redis lease (`tg:poller:<bot id>`, renewed
every third of its length; when the holder dies another process takes over once it
expires). The holder calls `deleteWebhook`, then `getUpdates` with a 25 s long poll and
hands each update, in order, to the same ingress as the webhook. An update is
acknowledged to Telegram (the next call's `offset` is past it) only after it is durably
queued; a crash in between makes the next holder read it again, and the dedup by
`update_id` drops what was queued already. An update the ingress cannot read is skipped
(a webhook would have answered it 400); a storage failure stops the batch unacknowledged.

A 409 Conflict means someone else gets this bot's updates: a webhook set by another
deployment, or another program calling `getUpdates`. It is logged as an error (with
what to do) every time it happens, and polling retries after `CONFLICT_BACKOFF`; the
webhook is not deleted again, so two deployments do not fight over the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation.errors import BadRequest, GatewayError, StorageError
from foundation.redis_keys import Keys

from .wire import BotApi, Reply

log = logging.getLogger(__name__)

POLL_TIMEOUT = 25
"""Seconds Telegram holds a `getUpdates` call open when there is nothing to deliver."""
CONFLICT_BACKOFF = 30.0
FAILURE_BACKOFF = (1.0, 60.0)

Receive = Callable[[dict[str, Any]], Awaitable[None]]

# KEYS: lease. ARGV: holder, ms. Renews only the holder's own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One holder at a time across every process, for `seconds` unless renewed."""

    def __init__(self, redis: Redis, key: str, seconds: float) -> None:
        self._redis = redis
        self._key = key
        self._ms = max(1, int(seconds * 1000))
        self._holder = secrets.token_hex(16)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        return bool(await self._redis.set(self._key, self._holder, nx=True, px=self._ms))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self._key], args=[self._holder, self._ms]))

    async def release(self) -> None:
        await self._release(keys=[self._key], args=[self._holder])


class Poller:
    def __init__(
        self,
        api: BotApi,
        redis: Redis,
        keys: Keys,
        bot_id: str,
        receive: Receive,
        *,
        lease: float,
        allowed_updates: Sequence[str],
    ) -> None:
        self._api = api
        self._receive = receive
        self._lease = Lease(redis, keys.global_key(f"tg:poller:{bot_id}"), lease)
        self._every = lease / 3
        self._allowed = list(allowed_updates)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("poller is closed")
        self._task = asyncio.create_task(self._run(), name="telegram-poller")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        # A clean stop hands over at once instead of after the lease runs out.
        with contextlib.suppress(RedisError, OSError):
            await self._lease.release()

    async def _run(self) -> None:
        while True:
            try:
                held = await self._lease.acquire()
            except RedisError:
                held = False
            if held:
                log.info("telegram poller started in this process")
                await self._hold()
                with contextlib.suppress(RedisError, OSError):
                    await self._lease.release()
            await asyncio.sleep(self._every * random.uniform(0.5, 1.0))

    async def _hold(self) -> None:
        """Poll while the lease is renewed; stop polling the moment it is not."""
        poll = asyncio.create_task(self._poll(), name="telegram-getupdates")
        try:
            while not poll.done():
                await asyncio.wait([poll], timeout=self._every)
                if poll.done():
                    break
                try:
                    renewed = await self._lease.renew()
                except RedisError:
                    renewed = False
                if not renewed:
                    log.warning("telegram poller lease lost; another process may poll now")
                    break
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        if not poll.cancelled() and poll.exception() is not None:
            log.error("telegram poller stopped", exc_info=poll.exception())

    async def _poll(self) -> None:
        await self._delete_webhook()
        offset: int | None = None
        failures = 0
        while True:
            params: dict[str, Any] = {"timeout": POLL_TIMEOUT, "allowed_updates": self._allowed}
            if offset is not None:
                params["offset"] = offset
            try:
                reply = await self._api.call("getUpdates", params)
            except GatewayError:
                reply = None
            if reply is None or not reply.ok or not isinstance(reply.result, list):
                failures += 1
                await asyncio.sleep(self._backoff(reply, failures))
                continue
            offset, complete = await self._queue(reply.result, offset)
            failures = 0 if complete else failures + 1
            if not complete:
                await asyncio.sleep(self._backoff(None, failures))

    async def _queue(self, updates: list[Any], offset: int | None) -> tuple[int | None, bool]:
        """Queue updates in order; the offset past the last one queued, and whether all were."""
        for raw in updates:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                continue
            try:
                await self._receive(raw)
            except BadRequest:
                log.warning("telegram update skipped: not readable", extra={"update_id": update_id})
            except (StorageError, RedisError) as exc:
                log.warning("telegram updates not queued; they will be read again", extra={"error": type(exc).__name__})
                return offset, False
            except Exception:
                log.exception("telegram update not queued; it will be read again", extra={"update_id": update_id})
                return offset, False
            offset = update_id + 1
        return offset, True

    def _backoff(self, reply: Reply | None, failures: int) -> float:
        if reply is not None and reply.status == 409:
            log.error(
                "telegram getUpdates conflict: something else receives this bot's updates (a webhook "
                "set by another deployment, or another program polling); remove it, or run every "
                "gateway of this bot with ALLY_TELEGRAM_MODE=polling",
                extra={"description": str(reply.data.get("description", ""))[:120]},
            )
            return CONFLICT_BACKOFF
        if reply is not None and reply.retry_after is not None:
            return min(reply.retry_after, FAILURE_BACKOFF[1])
        log.warning("telegram polling call failed", extra={"status": reply.status if reply is not None else None})
        low, high = FAILURE_BACKOFF
        return float(min(high, low * 2.0 ** min(failures, 6)) * random.uniform(0.8, 1.2))

    async def _delete_webhook(self) -> None:
        """Until Telegram confirms: it refuses getUpdates while a webhook is set. Waiting updates are kept."""
        failures = 0
        while True:
            try:
                reply: Reply | None = await self._api.call("deleteWebhook", {"drop_pending_updates": False})
            except GatewayError:
                reply = None
            if reply is not None and reply.ok:
                return
            failures += 1
            await asyncio.sleep(self._backoff(reply, failures))
