"""Who is calling: the platform (admin token) or a dedicated server (server token), and which
user an admin route is about. Every route family asks here, so no route module borrows
another's helpers."""

from __future__ import annotations

from aiohttp import web

from foundation.app_keys import SETTINGS
from foundation.errors import BadRequest, NotFound, Unauthorized
from foundation.http import bearer, constant_time_equal
from foundation.types import USER_ID, UserId
from routing.services import SERVICES, Services


def require_admin(request: web.Request) -> None:
    expected = request.app[SETTINGS].admin_token
    if expected is None or not constant_time_equal(bearer(request), expected):
        raise Unauthorized("unauthorized", "admin token required")


async def require_server(request: web.Request) -> UserId:
    """The user whose dedicated server is calling; 401 for anything else."""
    user_id = await request.app[SERVICES].registry.authenticate(bearer(request))
    if user_id is None:
        # A token was offered (a missing one is refused by `bearer`): it is not, or no longer, valid.
        raise Unauthorized("unauthorized", "server token is unknown or was rotated out; use the current one")
    return user_id


def check_user_id(user_id: str) -> str:
    if not USER_ID.match(user_id):
        raise BadRequest("invalid_user_id", "user_id must match ^[A-Za-z0-9_-]{1,64}$")
    return user_id


async def require_active(services: Services, user_id: str) -> None:
    """404 for unknown users and for users being erased (they are gone for every caller)."""
    if not await services.registry.exists(user_id) or await services.eraser.is_erasing(user_id):
        raise NotFound("user_not_found", "no such user")


async def admin_user(request: web.Request, *, must_exist: bool = True) -> tuple[Services, str]:
    """Authenticate the platform and validate the path's user id (404 for unknown or erasing users)."""
    require_admin(request)
    services = request.app[SERVICES]
    user_id = check_user_id(request.match_info["user_id"])
    if must_exist:
        await require_active(services, user_id)
    return services, user_id
