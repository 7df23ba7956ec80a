"""What every part of the process shares, built once at start-up by the composition root
(`gateway/app.py`) and closed once at the end.

Plugins (channels, OAuth's routes, the AI relay) read `Services` from the app under
`SERVICES` and register their background loops and per-user hooks (status, export, erasure)
here; the core never imports a plugin. The OAuth broker is not in here: it sits a layer up
(`oauth/broker.py`, under its own app key `BROKER`), so that everything here is routing's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from foundation.config import Settings
from foundation.redis_keys import Keys
from foundation.replication import Replication
from foundation.vault import Vault
from routing.delivery import DeliveryWorker
from routing.erasure import Eraser
from routing.handoff import Handoff
from routing.outage import Outages
from routing.registry import Registry

UserHook = Callable[[str], Awaitable[dict[str, Any]]]
EraseHook = Callable[[str], Awaitable[None]]
Loop = Callable[[], Awaitable[None]]


@dataclass
class Hooks:
    """Per-user contributions of channels and providers to status, export and erasure."""

    status: dict[str, UserHook] = field(default_factory=dict)
    export: dict[str, UserHook] = field(default_factory=dict)
    erase: dict[str, EraseHook] = field(default_factory=dict)
    link: dict[str, UserHook] = field(default_factory=dict)
    """Channels that link a chat to a user: a one-use link (`{"url", "code", "expires_at"}`)."""


@dataclass(frozen=True)
class Services:
    """Immutable once built: plugins add to `hooks` and `loops`, never replace a service."""

    settings: Settings
    redis: Redis
    keys: Keys
    vault: Vault
    registry: Registry
    handoff: Handoff
    worker: DeliveryWorker
    outages: Outages
    """Which users' servers are failing, and where their held events came from (`routing/outage.py`)."""
    session: aiohttp.ClientSession
    eraser: Eraser
    replication: Replication
    """How many replicas acknowledged writes wait for, and the shards lacking them."""
    hooks: Hooks = field(default_factory=Hooks)
    loops: dict[str, Loop] = field(default_factory=dict)
    """Background loops run by processes with the worker role, by name."""


SERVICES = web.AppKey("services", Services)
