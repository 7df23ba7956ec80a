"""Connections on the server API (contract §3) and disconnect on the admin API.

A server only ever names a provider, never a user: every call acts for the calling server's
own user, so another user's connection is simply not found (404).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from foundation.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotConnected,
    ProviderError,
    ProviderUnavailable,
    ReauthRequired,
    VaultError,
)
from foundation.http import json_response, read_json_object
from oauth.broker import BROKER, MAX_MIN_TTL
from oauth.store import PROVIDERS
from routing.access import admin_user, require_server


def _provider(request: web.Request) -> str:
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise NotConnected(provider[:32])
    return provider


async def _min_ttl(request: web.Request) -> int:
    if not request.can_read_body:
        return 300
    body = await read_json_object(request, limit=4096)
    value: Any = body.get("min_ttl", 300)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MIN_TTL:
        raise BadRequest("invalid_min_ttl", f"min_ttl must be a whole number of seconds from 0 to {MAX_MIN_TTL}")
    return value


async def list_connections(request: web.Request) -> web.Response:
    user_id = await require_server(request)
    connections = await request.app[BROKER].connections(user_id)
    return json_response([c.public() for c in connections])


async def lease_token(request: web.Request) -> web.Response:
    user_id = await require_server(request)
    provider = _provider(request)
    min_ttl = await _min_ttl(request)
    try:
        lease = await request.app[BROKER].access_token(user_id, provider, min_ttl=min_ttl)
    except ReauthRequired as exc:
        raise Conflict(
            "reauth_required", f"the {provider} grant is no longer valid ({exc.reason}); reconnect"
        ) from None
    except VaultError:
        # The stored grant does not open (moved, tampered with, or its key is gone): reconnect.
        raise Conflict("reauth_required", f"the stored {provider} grant cannot be read; reconnect") from None
    except ProviderUnavailable:
        raise ApiError("provider_unavailable", f"{provider} is not answering; retry later", status=503) from None
    except ProviderError:
        raise ApiError("provider_error", f"{provider} refused the refresh", status=502) from None
    return json_response(lease.as_json(), headers={"Cache-Control": "no-store"})


async def server_disconnect(request: web.Request) -> web.Response:
    user_id = await require_server(request)
    provider = _provider(request)
    await request.app[BROKER].disconnect(user_id, provider)
    return json_response({"provider": provider, "status": "disconnected"})


async def admin_disconnect(request: web.Request) -> web.Response:
    _, user_id = await admin_user(request)
    provider = _provider(request)
    await request.app[BROKER].disconnect(user_id, provider)
    return json_response({"user_id": user_id, "provider": provider, "status": "disconnected"})


ROUTES = (
    web.get("/v1/connections", list_connections),
    web.post("/v1/connections/{provider}/token", lease_token),
    web.delete("/v1/connections/{provider}", server_disconnect),
    web.delete("/admin/v1/users/{user_id}/connections/{provider}", admin_disconnect),
)
