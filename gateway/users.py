"""What the platform can do with a user — shared by the admin API and `ally-gateway user`.

Each function validates its input and raises `ApiError`s, so both callers answer alike.
"""

from __future__ import annotations

import time
from typing import Any

from foundation.clock import iso
from foundation.errors import BadRequest, Conflict
from routing.access import check_user_id, require_active
from routing.registry import OVERLAP, Credentials, User
from routing.sealing import parse_public_key
from routing.services import Services
from routing.urls import validate_server_url

EXPORT_SCHEMA = "ally-gateway/export/v1"
MAX_OVERLAP = 7 * 24 * 3600


async def register(
    services: Services, user_id: str, server_url: object, server_public_key: object
) -> tuple[User, Credentials | None]:
    """Create the user (fresh credentials returned once) or update its server (none returned)."""
    check_user_id(user_id)
    url = validate_server_url(server_url, production=services.settings.production)
    if not isinstance(server_public_key, str):
        raise BadRequest("invalid_server_public_key", "server_public_key must be a base64url string")
    try:
        parse_public_key(server_public_key)
    except Exception as exc:
        raise BadRequest("invalid_server_public_key", str(exc)) from None
    if await services.eraser.is_erasing(user_id):
        raise Conflict("user_erasing", "this user is being erased; try again when GET answers 404")
    return await services.registry.put(user_id, url, server_public_key.strip())


def check_overlap(overlap: object) -> int:
    if overlap is None:
        return OVERLAP
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= MAX_OVERLAP:
        raise BadRequest("invalid_overlap", f"overlap must be whole seconds from 0 to {MAX_OVERLAP}")
    return overlap


async def rotate(services: Services, user_id: str, overlap: object = None) -> dict[str, Any]:
    """New server token and webhook secret (shown once); the old ones stay valid `overlap` seconds."""
    seconds = check_overlap(overlap)
    await require_active(services, user_id)
    credentials = await services.registry.rotate(user_id, seconds)
    return {
        "user_id": user_id,
        "server_token": credentials.server_token,
        "webhook_secret": credentials.webhook_secret,
        "overlap": seconds,
        "previous_valid_until": iso(time.time() + seconds),
    }


async def _queue(services: Services, user_id: str) -> dict[str, Any]:
    redis, keys = services.redis, services.keys
    pending = int(await redis.xlen(keys.queue(user_id)))
    head = await redis.xrange(keys.queue(user_id), "-", "+", count=1)
    oldest = int(head[0][0].decode().partition("-")[0]) / 1000 if head else None
    txn = await redis.hmget(keys.txn(user_id), ["txn_id", "attempts", "count"])
    return {
        "pending": pending,
        "oldest_received_at": iso(oldest) if oldest else None,
        "oldest_age_seconds": round(max(0.0, time.time() - oldest), 3) if oldest else None,
        "in_flight": {"txn_id": txn[0].decode(), "attempts": int(txn[1] or 0), "events": int(txn[2] or 0)}
        if txn[0]
        else None,
    }


async def _counters(services: Services, user_id: str) -> dict[str, str]:
    raw = await services.redis.hgetall(services.keys.counters(user_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def _server(user: User, counters: dict[str, str]) -> dict[str, Any]:
    last_ok = float(counters.get("last_ok_at", 0) or 0)
    last_fail = float(counters.get("last_failure_at", 0) or 0)
    health = "unknown" if not (last_ok or last_fail) else ("ok" if last_ok >= last_fail else "failing")
    return {
        "url": user.server_url,
        "public_key": user.server_public_key,
        "health": health,
        "last_success_at": iso(last_ok) if last_ok else None,
        "last_failure_at": iso(last_fail) if last_fail else None,
        "last_failure": counters.get("last_failure"),
    }


async def _sealing(services: Services, user_id: str) -> dict[str, Any]:
    """The key events are sealed to now, and the older keys that queued events still need."""
    keys = await services.registry.key_status(user_id)
    return {
        "suite": keys.suite,
        "kid": keys.kid,
        "held_for_older_keys": keys.held_for_older_keys,
        "older_keys": [
            {"kid": k.kid, "suite": k.suite, "held": k.held, "replaced_at": iso(k.replaced_at)} for k in keys.older
        ],
    }


async def status(services: Services, user_id: str) -> dict[str, Any]:
    """`GET /admin/v1/users/{id}`: server health, queued events, channels' and providers' status."""
    await require_active(services, user_id)
    user = await services.registry.require(user_id)
    counters = await _counters(services, user_id)
    queue = await _queue(services, user_id)
    due = await services.redis.zscore(services.keys.due, user_id)
    server = _server(user, counters)
    server["next_attempt_at"] = iso(float(due)) if due is not None and queue["pending"] else None
    result: dict[str, Any] = {
        "user_id": user_id,
        "server_url": user.server_url,
        "server_public_key": user.server_public_key,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
        "server": {k: v for k, v in server.items() if k not in ("url", "public_key")},
        "sealing": await _sealing(services, user_id),
        "queue": queue,
        "counters": {"events_in": int(counters.get("events_in", 0)), "events_out": int(counters.get("events_out", 0))},
    }
    for name, hook in services.hooks.status.items():
        result[name] = await hook(user_id)
    return result


async def export(services: Services, user_id: str) -> dict[str, Any]:
    """Everything the gateway holds about the user, as one document (docs/export.schema.json).

    Secrets are never part of it: no server token (only its hash is stored anyway), no webhook
    secret, no provider token, no key material. Queued events are counted, not included:
    they are sealed to the user's own server and the gateway cannot read them.
    """
    await require_active(services, user_id)
    user = await services.registry.require(user_id)
    counters = await _counters(services, user_id)
    queue = await _queue(services, user_id)
    document: dict[str, Any] = {
        "schema": EXPORT_SCHEMA,
        "exported_at": iso(time.time()),
        "account": {"user_id": user_id, "created_at": iso(user.created_at), "updated_at": iso(user.updated_at)},
        "server": _server(user, counters),
        "sealing": await _sealing(services, user_id),
        "queue": {k: v for k, v in queue.items() if k != "in_flight"}
        | {"in_flight_events": queue["in_flight"]["events"] if queue["in_flight"] else 0},
        "counters": {"events_in": int(counters.get("events_in", 0)), "events_out": int(counters.get("events_out", 0))},
    }
    for name, hook in services.hooks.export.items():
        document[name] = await hook(user_id)
    return document


async def erase(services: Services, user_id: str) -> dict[str, Any]:
    """Start (or join) the user's erasure; idempotent. Returns its progress record."""
    check_user_id(user_id)
    return await services.eraser.start(user_id)


async def erasure(services: Services, user_id: str) -> dict[str, Any] | None:
    """The erasure in progress, or None when there is none (finished or never started)."""
    return await services.eraser.progress(check_user_id(user_id))
