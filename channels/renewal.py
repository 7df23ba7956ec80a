"""What the Gmail watch and the Graph subscription lifecycles share: timing, back-off, the
per-user state hash written only while connected, and the plugin a mail channel is (renewal
loop, connect/disconnect hooks, status/export/erase hooks)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from channels.tokens import TokenSource
from foundation import clock
from foundation.errors import ProviderError
from foundation.schedule import DueSet
from routing.hooks import Hooks
from routing.plugin import Lifecycle, Plugin
from routing.services import Services

# KEYS: state hash. ARGV: field, value pairs ('' value deletes the field). Writes only while the
# connection still exists, so an upkeep step finishing after a disconnect cannot bring the state back.
_UPDATE = """
if redis.call('HEXISTS', KEYS[1], 'account') == 0 then return 0 end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


@dataclass(frozen=True)
class Timing:
    """How often the renewal loops look for due work and how long a claim is leased."""

    poll: float = 5.0
    lease: float = 120.0
    concurrency: int = 8


def backoff(failures: int, error: Exception | None = None) -> float:
    """Seconds until the next attempt after `failures` failures in a row: 1 min doubling to 1 h, ±20 %."""
    delay = min(60.0 * 2.0 ** max(0, min(failures - 1, 6)), 3600.0)
    if isinstance(error, ProviderError) and error.retry_after:
        delay = min(max(delay, error.retry_after), 3600.0)
    return delay * random.uniform(0.8, 1.2)


def iso(ts: float | None) -> str | None:
    return clock.iso(ts) if ts else None


def text(values: dict[bytes, bytes], name: str) -> str:
    raw = values.get(name.encode())
    return raw.decode() if raw is not None else ""


def number(values: dict[bytes, bytes], name: str) -> float:
    try:
        return float(text(values, name) or 0)
    except ValueError:
        return 0.0


def reason(exc: Exception) -> str:
    """What a state hash and a log line may say about a failure: a code, never a message."""
    if isinstance(exc, ProviderError):
        return exc.reason
    return type(exc).__name__


class Upkeep:
    """One mail channel's per-user upkeep: the `{u:<id>}:<NAME>` state hash (with the sealed
    `account` while connected) and the due set saying when each user is looked after next."""

    NAME: ClassVar[str]
    PROVIDER: ClassVar[str]

    def __init__(self, services: Services, tokens: TokenSource, due: DueSet) -> None:
        self._services = services
        self._redis = services.redis
        self._tokens = tokens
        self.due = due
        self._update = services.redis.register_script(_UPDATE)

    def _state(self, user_id: str) -> str:
        return self._services.keys.user_key(user_id, self.NAME)

    async def _set(self, user_id: str, **fields: str | int | float) -> bool:
        args: list[str] = []
        for name, value in fields.items():
            args += [name, str(value)]
        return bool(int(await self._update(keys=[self._state(user_id)], args=args)))

    async def renew_now(self, user_id: str) -> None:
        await self.due.run_now(user_id, self.renew)

    async def renew(self, user_id: str) -> float | None:
        """Look after this user now; return when to look again (None: stop)."""
        raise NotImplementedError

    async def connected(self, user_id: str, account: str) -> None:
        raise NotImplementedError

    async def disconnected(self, user_id: str) -> None:
        raise NotImplementedError

    async def status(self, user_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def export(self, user_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, timing: Timing, loop: str) -> None:
        """The renewal loop: look after each user when they are due."""
        await self.due.run(self.renew, poll=timing.poll, concurrency=timing.concurrency, name=loop)


def upkeep_plugin(
    kind: type[Upkeep],
    running: Callable[[], Upkeep],
    timing: Callable[[], Timing],
    *,
    enabled: bool,
    loop: str,
    routes: Sequence[web.RouteDef],
    start: Lifecycle,
) -> Plugin:
    """A mail channel: its per-user status, export and erase hooks always; when its provider is
    configured, its renewal loop and the broker's connect/disconnect hooks too. `running` finds
    the upkeep its start-up built, `timing` the loop's timing."""

    async def status(user_id: str) -> dict[str, Any]:
        return await running().status(user_id)

    async def export(user_id: str) -> dict[str, Any]:
        return await running().export(user_id)

    async def erase(user_id: str) -> None:
        await running().disconnected(user_id)

    hooks = Hooks(status={kind.NAME: status}, export={kind.NAME: export}, erase={kind.NAME: erase})
    if not enabled:
        return Plugin(name=kind.NAME, routes=routes, hooks=hooks, start=start)

    async def connected(user_id: str, provider: str, account: str) -> None:
        if provider == kind.PROVIDER:
            await running().connected(user_id, account)

    async def disconnected(user_id: str, provider: str, account: str) -> None:
        if provider == kind.PROVIDER:
            await running().disconnected(user_id)

    async def renewals() -> None:
        await running().run(timing(), loop)

    return Plugin(
        name=kind.NAME,
        routes=routes,
        hooks=Hooks(
            status=hooks.status,
            export=hooks.export,
            erase=hooks.erase,
            connected={kind.NAME: connected},
            disconnected={kind.NAME: disconnected},
        ),
        loops={loop: renewals},
        start=start,
    )
