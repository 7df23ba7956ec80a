"""The gateway's parts, started for one operator command and stopped after it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiohttp import web

from foundation.config import Settings
from gateway.app import PLUGINS, create_app
from routing.services import SERVICES, Services


@asynccontextmanager
async def operator_app(settings: Settings, parts: Sequence[str] = PLUGINS) -> AsyncIterator[web.Application]:
    """The core and the channels in `parts` (all of them unless told: every hook is there),
    without serving or background loops."""
    app = create_app(settings, "operator", parts)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


@asynccontextmanager
async def operator_services(settings: Settings, parts: Sequence[str] = PLUGINS) -> AsyncIterator[Services]:
    async with operator_app(settings, parts) as app:
        yield app[SERVICES]
