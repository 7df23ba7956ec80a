"""Admin API (contract §2): the platform registers users and manages their credentials."""

from __future__ import annotations

import logging

from aiohttp import web

from foundation.http import json_response, read_json_object
from gateway import users
from routing.access import admin_user

log = logging.getLogger(__name__)

PREFIX = "/admin/v1/users/{user_id}"


async def put_user(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request, must_exist=False)
    body = await read_json_object(request, limit=16 * 1024)
    user, credentials = await users.register(services, user_id, body.get("server_url"), body.get("server_public_key"))
    if credentials is None:
        log.info("user updated", extra={"user_id": user_id})
        return json_response({"user_id": user.user_id, "server_url": user.server_url}, status=200)
    log.info("user created", extra={"user_id": user_id})
    return json_response(
        {"user_id": user_id, "server_token": credentials.server_token, "webhook_secret": credentials.webhook_secret},
        status=201,
    )


async def get_user(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request, must_exist=False)
    progress = await users.erasure(services, user_id)
    if progress is not None:
        return json_response({"user_id": user_id, "status": "erasing", "erasure": progress})
    return json_response(await users.status(services, user_id))


async def delete_user(request: web.Request) -> web.Response:
    """Erasure: 202 at once, finished in the background; repeating it is harmless."""
    services, user_id = await admin_user(request, must_exist=False)
    progress = await users.erase(services, user_id)
    log.info("user erasure requested", extra={"user_id": user_id})
    return json_response({"user_id": user_id, "status": "erasing", "erasure": progress}, status=202)


async def export_user(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request)
    return json_response(await users.export(services, user_id))


async def rotate_credentials(request: web.Request) -> web.Response:
    """New credentials; the body `{"overlap": seconds}` is optional (default a day, 0 revokes at once)."""
    services, user_id = await admin_user(request)
    body = await read_json_object(request, limit=1024) if request.body_exists else {}
    answer = await users.rotate(services, user_id, body.get("overlap"))
    log.info("credentials rotated", extra={"user_id": user_id, "overlap": answer["overlap"]})
    return json_response(answer)


ROUTES = (
    web.put(PREFIX, put_user),
    web.get(PREFIX, get_user),
    web.delete(PREFIX, delete_user),
    web.get(PREFIX + "/export", export_user),
    web.post(PREFIX + "/credentials/rotate", rotate_credentials),
)
