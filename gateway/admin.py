"""Admin API (contract §2): the platform registers users and manages their credentials."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway.auth import require_admin
from gateway.errors import BadRequest, NotFound
from gateway.http import json_response, read_json_object
from gateway.keys import SERVICES
from gateway.services import Services
from gateway.types import USER_ID
from routing.sealing import parse_public_key
from routing.urls import validate_server_url

log = logging.getLogger(__name__)

PREFIX = "/admin/v1/users/{user_id}"


def user_id_of(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not USER_ID.match(user_id):
        raise BadRequest("invalid_user_id", "user_id must match ^[A-Za-z0-9_-]{1,64}$")
    return user_id


async def admin_user(request: web.Request, *, must_exist: bool = True) -> tuple[Services, str]:
    """Authenticate the platform and validate the path's user id (404 for unknown or erasing users)."""
    require_admin(request)
    services = request.app[SERVICES]
    user_id = user_id_of(request)
    if must_exist and (not await services.registry.exists(user_id) or await services.eraser.is_erasing(user_id)):
        raise NotFound("user_not_found", "no such user")
    return services, user_id


async def put_user(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request, must_exist=False)
    body = await read_json_object(request, limit=16 * 1024)
    server_url = validate_server_url(body.get("server_url"), production=services.settings.production)
    public_key = body.get("server_public_key")
    if not isinstance(public_key, str):
        raise BadRequest("invalid_server_public_key", "server_public_key must be a base64url string")
    try:
        parse_public_key(public_key)
    except Exception as exc:
        raise BadRequest("invalid_server_public_key", str(exc)) from None
    if await services.eraser.is_erasing(user_id):
        raise BadRequest("user_erasing", "this user is being erased; try again when GET answers 404")
    user, credentials = await services.registry.put(user_id, server_url, public_key.strip())
    if credentials is None:
        log.info("user updated", extra={"user_id": user_id})
        return json_response({"user_id": user.user_id, "server_url": user.server_url}, status=200)
    log.info("user created", extra={"user_id": user_id})
    return json_response(
        {"user_id": user_id, "server_token": credentials.server_token, "webhook_secret": credentials.webhook_secret},
        status=201,
    )


async def user_status(services: Services, user_id: str) -> dict[str, Any]:
    user = await services.registry.require(user_id)
    redis, keys = services.redis, services.keys
    counters = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.counters(user_id))).items()}
    pending = int(await redis.xlen(keys.queue(user_id)))
    head = await redis.xrange(keys.queue(user_id), "-", "+", count=1)
    oldest = int(head[0][0].decode().partition("-")[0]) / 1000 if head else None
    txn = await redis.hmget(keys.txn(user_id), ["txn_id", "attempts", "count"])
    due = await redis.zscore(keys.due, user_id)
    last_ok = float(counters.get("last_ok_at", 0) or 0)
    last_fail = float(counters.get("last_failure_at", 0) or 0)
    health = "unknown" if not (last_ok or last_fail) else ("ok" if last_ok >= last_fail else "failing")
    status: dict[str, Any] = {
        "user_id": user_id,
        "server_url": user.server_url,
        "server_public_key": user.server_public_key,
        "created_at": _iso(user.created_at),
        "updated_at": _iso(user.updated_at),
        "server": {
            "health": health,
            "last_success_at": _iso(last_ok) if last_ok else None,
            "last_failure_at": _iso(last_fail) if last_fail else None,
            "last_failure": counters.get("last_failure"),
            "next_attempt_at": _iso(float(due)) if due is not None and pending else None,
        },
        "queue": {
            "pending": pending,
            "oldest_age_seconds": round(time.time() - oldest, 3) if oldest else None,
            "in_flight": {"txn_id": txn[0].decode(), "attempts": int(txn[1] or 0), "events": int(txn[2] or 0)}
            if txn[0]
            else None,
        },
        "counters": {"events_in": int(counters.get("events_in", 0)), "events_out": int(counters.get("events_out", 0))},
    }
    for name, hook in services.hooks.status.items():
        status[name] = await hook(user_id)
    return status


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


async def get_user(request: web.Request) -> web.Response:
    require_admin(request)
    services = request.app[SERVICES]
    user_id = user_id_of(request)
    if await services.eraser.is_erasing(user_id):
        return json_response({"user_id": user_id, "status": "erasing"}, status=200)
    return json_response(await user_status(services, user_id))


async def delete_user(request: web.Request) -> web.Response:
    require_admin(request)
    services = request.app[SERVICES]
    user_id = user_id_of(request)
    if not await services.registry.exists(user_id) and not await services.eraser.is_erasing(user_id):
        raise NotFound("user_not_found", "no such user")
    await services.eraser.start(user_id)
    log.info("user erasure started", extra={"user_id": user_id})
    return json_response({"user_id": user_id, "status": "erasing"}, status=202)


async def export_user(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request)
    status = await user_status(services, user_id)
    document: dict[str, Any] = {
        "schema": "ally-gateway/export/v1",
        "exported_at": _iso(time.time()),
        "account": {"user_id": user_id, "created_at": status["created_at"], "updated_at": status["updated_at"]},
        "server": {"url": status["server_url"], "public_key": status["server_public_key"]},
        "queue": status["queue"],
        "counters": status["counters"],
    }
    for name, hook in services.hooks.export.items():
        document[name] = await hook(user_id)
    return json_response(document)


async def rotate_credentials(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request)
    credentials = await services.registry.rotate(user_id)
    log.info("credentials rotated", extra={"user_id": user_id})
    return json_response(
        {
            "user_id": user_id,
            "server_token": credentials.server_token,
            "webhook_secret": credentials.webhook_secret,
            "previous_valid_until": _iso(time.time() + 24 * 3600),
        }
    )


def setup(app: web.Application) -> None:
    app.router.add_put(PREFIX, put_user)
    app.router.add_get(PREFIX, get_user)
    app.router.add_delete(PREFIX, delete_user)
    app.router.add_get(PREFIX + "/export", export_user)
    app.router.add_post(PREFIX + "/credentials/rotate", rotate_credentials)
