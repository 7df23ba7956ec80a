"""Server API basics (contract §3): what every dedicated server can call."""

from __future__ import annotations

from aiohttp import web

from foundation.http import json_response
from routing.access import require_server
from routing.services import SERVICES


async def ping(request: web.Request) -> web.Response:
    """Liveness from the server; releases its held events for immediate redelivery."""
    user_id = await require_server(request)
    services = request.app[SERVICES]
    pending = int(await services.redis.xlen(services.keys.queue(user_id)))
    await services.handoff.schedule(user_id, now=True)
    return json_response({"ok": True, "user_id": user_id, "pending": pending})


ROUTES = (web.post("/v1/ping", ping),)
