"""The token broker: short-lived access tokens out, refresh tokens never.

The app holds the broker under `BROKER` (built by the composition root with the services, so
every channel's start-up can use it). What channels use, with `broker = app[BROKER]`:

    lease = await broker.access_token(user_id, "google", min_ttl=300)
        → Lease(access_token, expires_at, scopes, account)
        raises NotConnected (404), ReauthRequired (grant dead; answer 409), ProviderUnavailable
    await broker.connections(user_id)           → [Connection]
    await broker.connection(user_id, provider)  → Connection | None

A channel that must know when a connection is made or ends declares `connected` and
`disconnected` hooks in its plugin (`routing/hooks.py`); the broker is built with all of them
and tells each one in turn: `await hook(user_id, provider, account)`.

A cached access token is returned while it lives at least `min_ttl` seconds. Otherwise one
refresh runs per connection: in-process callers share one task, processes share a Redis lock,
and every write is compare-and-set on the record's version, so the loser of a race reads the
winner's token instead of spending a rotated refresh token (which would look like a dead grant).
`on_disconnect` hooks run while the tokens still open, before revocation and before erasure
shreds the user's data key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from foundation import metrics
from foundation.clock import iso
from foundation.config import Settings
from foundation.errors import (
    BadRequest,
    ClosedError,
    NotConnected,
    ProviderError,
    ProviderUnavailable,
    ReauthRequired,
    VaultError,
)
from foundation.redis_keys import Keys
from foundation.types import Event
from foundation.vault import Vault
from oauth.providers import Grant, Provider
from oauth.revocations import Revocations
from oauth.store import CONNECTED, PROVIDERS, REAUTH_REQUIRED, Connection, ConnectionStore, Tokens
from routing.handoff import Handoff, Item
from routing.hooks import ConnectionHook

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MIN_TTL = 3000  # providers' access tokens live about an hour; asking for more could never be met
FRESH_FOR = 30.0  # seconds after a refresh during which its token is returned whatever min_ttl asks
LOCK_TTL_MS = 60_000
LOCK_WAIT = 60.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    access_token: str = field(repr=False)
    expires_at: float
    scopes: tuple[str, ...]
    account: str

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "expires_at": iso(self.expires_at),
            "scopes": list(self.scopes),
            "account": self.account,
        }


def providers_for(settings: Settings, session: aiohttp.ClientSession) -> dict[str, Provider]:
    """The configured providers (a provider is off while its client id or secret is unset).

    Each provider's SDKs are imported only when it is configured: they take long to import."""
    found: dict[str, Provider] = {}
    if settings.google_enabled:
        from oauth.google import Google

        found["google"] = Google(settings, session)
    if settings.microsoft_enabled:
        from oauth.microsoft import Microsoft

        found["microsoft"] = Microsoft(settings)
    return found


class Broker:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        vault: Vault,
        handoff: Handoff,
        providers: dict[str, Provider],
        *,
        on_connected: Sequence[ConnectionHook] = (),
        on_disconnect: Sequence[ConnectionHook] = (),
        threads: int = 8,
        retry_wait: float = 0.5,
        attempts: int = 3,
    ) -> None:
        self.store = ConnectionStore(redis, keys, vault)
        self.providers = providers
        self.on_connected = tuple(on_connected)
        self.on_disconnect = tuple(on_disconnect)
        self.revocations = Revocations(redis, keys, vault, self._revoke_token)
        self._redis = redis
        self._handoff = handoff
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oauth-sdk")
        self._inflight: dict[tuple[str, str], asyncio.Task[Lease]] = {}
        self._release = redis.register_script(_RELEASE)
        self._retry_wait = retry_wait
        self._attempts = attempts
        self._closed = False

    # -- what channels and the API call -------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in PROVIDERS:
            raise BadRequest("unknown_provider", "provider must be google or microsoft")
        found = self.providers.get(name)
        if found is None:
            raise BadRequest("provider_not_configured", f"{name} is not configured on this gateway")
        return found

    async def connections(self, user_id: str) -> list[Connection]:
        return await self.store.all(user_id)

    async def connection(self, user_id: str, provider: str) -> Connection | None:
        found = await self.store.get(user_id, provider)
        return found[0] if found else None

    async def access_token(self, user_id: str, provider: str, *, min_ttl: int = 300) -> Lease:
        """A token living at least `min_ttl` seconds (capped at 3000), refreshing at most once at a time."""
        self._check_open()
        min_ttl = max(0, min(int(min_ttl), MAX_MIN_TTL))
        connection, tokens = await self._usable(user_id, provider)
        now = time.time()
        if tokens.expires_at - now >= min_ttl:
            return _lease(connection, tokens)
        if tokens.expires_at > now and now - connection.updated_at < FRESH_FOR:
            # Just refreshed and still valid: what the provider grants is as long as it gets, and
            # refreshing again for a min_ttl it cannot meet would only hammer its token endpoint.
            return _lease(connection, tokens)
        key = (user_id, provider)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(user_id, provider, connection.version))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._inflight.pop(key, None) if self._inflight.get(key) is t else None)
        # Shielded: a caller that gives up does not cancel the refresh the others wait for.
        return await asyncio.shield(task)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking SDK call in the broker's bounded thread pool."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    # -- connect, disconnect, erase --------------------------------------------------------------

    async def connected(self, user_id: str, provider: str, grant: Grant) -> Connection:
        """Store a grant from a finished connect flow, then tell the user's server and the channels."""
        previous = await self._load_quietly(user_id, provider)
        same = previous is not None and previous[0].account == grant.account
        if previous is not None and not same:
            # Another account replaces this one: the old one is disconnected first.
            await self._let_go(previous[0], previous[1])
        tokens = grant.tokens.keeping_refresh_token_of(previous[1] if same and previous else None)
        connected_at = previous[0].connected_at if same and previous else time.time()
        await self.store.put(user_id, provider, grant.account, tokens, connected_at=connected_at)
        await self._announce(user_id, provider, grant.account, CONNECTED, None)
        await self._fire(self.on_connected, user_id, provider, grant.account)
        connection = await self.connection(user_id, provider)
        assert connection is not None
        log.info("connection stored", extra={"user_id": user_id, "provider": provider, "reconnect": same})
        return connection

    async def disconnect(self, user_id: str, provider: str) -> None:
        found = await self._load_quietly(user_id, provider)
        if found is None:
            raise NotConnected(provider)
        await self._let_go(*found)
        await self.store.delete(user_id, provider)
        await self._announce(user_id, provider, found[0].account, "disconnected", "disconnected")

    async def erase(self, user_id: str) -> None:
        """Erasure hook: channels let go, grants are revoked (or the revocation is recorded)."""
        for provider in PROVIDERS:
            found = await self._load_quietly(user_id, provider)
            if found is not None:
                await self._let_go(*found)
                await self.store.delete(user_id, provider)

    async def refuse(self, provider: str, grant: Grant) -> None:
        """Give back a grant that will not be stored (another account than expected signed in)."""
        await self._give_back(provider, grant.tokens)

    async def _let_go(self, connection: Connection, tokens: Tokens | None) -> None:
        await self._fire(self.on_disconnect, connection.user_id, connection.provider, connection.account)
        await self._give_back(connection.provider, tokens)

    async def _give_back(self, provider: str, tokens: Tokens | None) -> None:
        """Revoke at the provider now, or record the revocation for the retry loop."""
        token = tokens and (tokens.refresh_token or tokens.access_token)
        if not token or provider not in self.providers:
            return
        try:
            await self._revoke_token(provider, token)
            metrics.REVOCATIONS.labels(provider, "revoked").inc()
        except ProviderUnavailable:
            await self.revocations.add(provider, token)
        except ProviderError as exc:
            log.warning("revocation refused", extra={"provider": provider, "error": str(exc)})

    async def _revoke_token(self, provider: str, token: str) -> None:
        found = self.providers.get(provider)
        if found is None:
            raise ProviderError(f"{provider} is not configured; cannot revoke")
        await found.revoke(Tokens(access_token=token, expires_at=0, refresh_token=token))

    # -- refresh ---------------------------------------------------------------------------------

    async def _usable(self, user_id: str, provider: str) -> tuple[Connection, Tokens]:
        found = await self.store.load(user_id, provider)
        if found is None:
            raise NotConnected(provider)
        if found[0].status == REAUTH_REQUIRED:
            raise ReauthRequired(provider, found[0].reason or "invalid_grant")
        return found

    async def _refresh(self, user_id: str, provider: str, seen: int) -> Lease:
        lock = self.store.lock_key(user_id, provider)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            token = os.urandom(16).hex()
            if await self._redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
                try:
                    connection, tokens = await self._usable(user_id, provider)
                    if connection.version != seen and tokens.expires_at > time.time():
                        return _lease(connection, tokens)  # another process refreshed while we queued
                    return await self._refresh_locked(connection, tokens)
                finally:
                    await self._release(keys=[lock], args=[token])
            while time.monotonic() < deadline:
                if not await self._redis.exists(lock):
                    break
                await asyncio.sleep(0.05)
            connection, tokens = await self._usable(user_id, provider)
            if connection.version != seen and tokens.expires_at > time.time():
                metrics.TOKEN_REFRESHES.labels(provider, "shared").inc()
                return _lease(connection, tokens)
            if time.monotonic() >= deadline:
                raise ProviderUnavailable(f"{provider} refresh in another process did not finish")

    async def _refresh_locked(self, connection: Connection, tokens: Tokens) -> Lease:
        provider = self.provider(connection.provider)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(ProviderUnavailable),
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential_jitter(initial=self._retry_wait, max=8 * self._retry_wait),
                reraise=True,
            ):
                with attempt:
                    fresh = await self.blocking(provider.refresh, tokens)
        except ReauthRequired as exc:
            metrics.TOKEN_REFRESHES.labels(connection.provider, "dead").inc()
            await self._mark_dead(connection, exc.reason)
            raise
        except ProviderUnavailable:
            metrics.TOKEN_REFRESHES.labels(connection.provider, "unavailable").inc()
            log.warning("token refresh failed for now", extra={"provider": connection.provider})
            raise
        except ProviderError as exc:
            metrics.TOKEN_REFRESHES.labels(connection.provider, "error").inc()
            log.warning("token refresh refused", extra={"provider": connection.provider, "error": str(exc)})
            raise
        metrics.TOKEN_REFRESHES.labels(connection.provider, "ok").inc()
        version = await self.store.update_tokens(connection, fresh)
        if version:
            return _lease(connection, fresh)
        # The record changed under the lock (a reconnect): what is stored now wins.
        return _lease(*await self._usable(connection.user_id, connection.provider))

    async def _mark_dead(self, connection: Connection, reason: str) -> None:
        version = await self.store.set_status(connection, REAUTH_REQUIRED, reason)
        if not version:
            return  # the record changed (reconnected) since this refresh began
        log.warning("connection needs reauthorization", extra={"provider": connection.provider, "reason": reason})
        await self._announce(connection.user_id, connection.provider, connection.account, REAUTH_REQUIRED, reason)

    # -- helpers ---------------------------------------------------------------------------------

    async def _load_quietly(self, user_id: str, provider: str) -> tuple[Connection, Tokens | None] | None:
        found = await self.store.get(user_id, provider)
        if found is None:
            return None
        try:
            return found[0], await self.store.open(*found)
        except VaultError:
            log.warning("connection tokens do not open; treated as absent", extra={"provider": provider})
            return found[0], None

    async def _announce(self, user_id: str, provider: str, account: str, status: str, reason: str | None) -> None:
        payload = {"provider": provider, "account": account, "status": status, "reason": reason}
        # Every transition is won by one compare-and-set, so there is nothing to de-duplicate.
        item = Item(Event("connection.status", "connection", payload))
        try:
            await self._handoff(user_id, [item], dedup_scope="connection")
        except Exception:
            # The status is stored; the event is a courtesy the server can also poll for.
            log.exception("connection.status event not queued", extra={"provider": provider})

    async def _fire(self, hooks: Sequence[ConnectionHook], user_id: str, provider: str, account: str) -> None:
        for hook in hooks:
            try:
                await hook(user_id, provider, account)
            except Exception:
                log.exception("connection hook failed", extra={"provider": provider, "hook": _name(hook)})

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the broker is closed")

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)


def _lease(connection: Connection, tokens: Tokens) -> Lease:
    return Lease(tokens.access_token, tokens.expires_at, tokens.scopes, connection.account)


def _name(hook: Callable[..., Any]) -> str:
    return getattr(hook, "__qualname__", type(hook).__name__)


BROKER = web.AppKey("broker", Broker)
"""Where the app holds the broker (built by the composition root, beside `SERVICES`)."""
