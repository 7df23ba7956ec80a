"""Who is calling: the platform (admin token) or a dedicated server (server token)."""

from __future__ import annotations

from aiohttp import web

from foundation.errors import Unauthorized
from foundation.http import bearer, constant_time_equal
from foundation.types import UserId
from gateway.app_keys import SERVICES


def require_admin(request: web.Request) -> None:
    expected = request.app[SERVICES].settings.admin_token
    if expected is None or not constant_time_equal(bearer(request), expected):
        raise Unauthorized("unauthorized", "admin token required")


async def require_server(request: web.Request) -> UserId:
    """The user whose dedicated server is calling; 401 for anything else."""
    user_id = await request.app[SERVICES].registry.authenticate(bearer(request))
    if user_id is None:
        # A token was offered (a missing one is refused by `bearer`): it is not, or no longer, valid.
        raise Unauthorized("unauthorized", "server token is unknown or was rotated out; use the current one")
    return user_id
