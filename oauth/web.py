"""OAuth's part of the app: routes, per-user hooks (status, export, erasure) and the revocation loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from oauth import api, connect
from oauth.broker import BROKER
from routing.services import SERVICES


def setup(app: web.Application) -> None:
    connect.setup(app)
    api.setup(app)
    app.cleanup_ctx.append(_start)


async def _start(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    broker = app[BROKER]
    flows = connect.Flows(services)
    app[connect.FLOWS] = flows

    async def connections(user_id: str) -> dict[str, Any]:
        return {c.provider: c.detailed() for c in await broker.connections(user_id)}

    async def erase(user_id: str) -> None:
        await broker.erase(user_id)
        await flows.forget_user(user_id)

    services.hooks.status["connections"] = connections
    services.hooks.export["connections"] = connections
    services.hooks.erase["oauth"] = erase
    services.loops["oauth-revocations"] = broker.revocations.run
    yield
