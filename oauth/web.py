"""OAuth's part of the app: routes, per-user hooks (status, export, erasure) and the revocation loop."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from oauth import api, connect
from oauth.broker import BROKER
from routing.hooks import Hooks
from routing.plugin import Plugin
from routing.services import Services


def setup(app: web.Application) -> Plugin:
    async def connections(user_id: str) -> dict[str, Any]:
        return {c.provider: c.detailed() for c in await app[BROKER].connections(user_id)}

    async def erase(user_id: str) -> None:
        await app[BROKER].erase(user_id)
        await app[connect.FLOWS].forget_user(user_id)

    async def revocations() -> None:
        await app[BROKER].revocations.run()

    return Plugin(
        name="oauth",
        routes=[*connect.ROUTES, *api.ROUTES],
        hooks=Hooks(status={"connections": connections}, export={"connections": connections}, erase={"oauth": erase}),
        loops={"oauth-revocations": revocations},
        start=functools.partial(_start, app),
    )


@asynccontextmanager
async def _start(app: web.Application, services: Services) -> AsyncIterator[None]:
    app[connect.FLOWS] = connect.Flows(services)
    yield
