"""What every part of the process shares, built once at start-up by the composition root
(`gateway/app.py`) and closed once at the end.

Plugins (channels, OAuth's routes, the AI relay) are given `Services` when they start
(`routing/plugin.py`); request handlers read it from the app under `SERVICES`. The hooks and
loops plugins contribute are merged by the root before start-up and fixed from then on; the
core never imports a plugin. The OAuth broker is not in here: it sits a layer up
(`oauth/broker.py`, under its own app key `BROKER`), so that everything here is routing's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
from routing.hooks import Hooks, Loop
from routing.outage import Outages
from routing.registry import Registry


@dataclass(frozen=True)
class Services:
    """Immutable once built, hooks and loops included."""

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
    hooks: Hooks
    loops: Mapping[str, Loop]
    """Background loops run by processes with the worker role, by name (read-only)."""


SERVICES = web.AppKey("services", Services)
