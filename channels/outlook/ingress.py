"""`POST /outlook/notify` and `POST /outlook/lifecycle`: what Microsoft Graph sends us (contract §6).

- `?validationToken=…` (subscription creation): 200 `text/plain` with the decoded token, at once.
- a change notification collection `{"value": [item, …]}` of at most `MAX_ITEMS` items (more:
  413); each item's `clientState` is
  checked in constant time; good items are queued for their user as `outlook.notification`
  (the item without `clientState`); 202 once all are durably queued, 503 if queueing failed
  (Graph retries, and the retry is deduplicated).
- lifecycle items (`lifecycleEvent`) are recorded for the worker; Graph is never called
  here, because it wants an answer within 3 seconds.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from channels.outlook.subscriptions import Subscriptions
from foundation.errors import ApiError, BadRequest, GatewayError, StorageError
from foundation.http import read_json_object
from foundation.types import Event
from routing.handoff import Item

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
MAX_ITEMS = 500
"""Graph sends at most a few hundred notifications per request; more is refused (413) before any
Redis work, so one unauthenticated request costs a bounded number of Redis commands."""
MAX_VALIDATION_TOKEN = 4096


def validation(request: web.Request) -> web.Response | None:
    token = request.query.get("validationToken")
    if token is None:
        return None
    if len(token) > MAX_VALIDATION_TOKEN:
        raise BadRequest("invalid_validation_token", "validationToken is too long")
    # text/plain and nosniff: an echoed value can never be rendered as a page.
    return web.Response(text=token, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})


async def items_of(request: web.Request) -> list[dict[str, Any]]:
    body = await read_json_object(request, limit=MAX_BODY)
    value = body.get("value")
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise BadRequest("invalid_notification", "value must be a list of notification objects")
    if len(value) > MAX_ITEMS:
        raise ApiError("too_many_notifications", f"at most {MAX_ITEMS} notifications per request", status=413)
    return value


def dedup_id(item: dict[str, Any]) -> str:
    parts = [str(item.get(k, "")) for k in ("subscriptionId", "changeType", "resource", "id")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


async def notify(request: web.Request, subs: Subscriptions) -> web.Response:
    answer = validation(request)
    if answer is not None:
        return answer
    items = await items_of(request)
    owners = await _owners(subs, items)
    by_user: dict[str, list[Item]] = {}
    lifecycle: list[tuple[str, dict[str, Any]]] = []
    for item, user_id in zip(items, owners, strict=True):
        if user_id is None:
            continue
        if "lifecycleEvent" in item:
            # Sent here when a subscription has no lifecycle URL of its own.
            lifecycle.append((user_id, item))
            continue
        payload = {k: v for k, v in item.items() if k != "clientState"}
        by_user.setdefault(user_id, []).append(Item(Event("outlook.notification", "outlook", payload), dedup_id(item)))
    failed = False
    for user_id, queued in by_user.items():
        try:
            await subs.queue(user_id, queued)
        except (GatewayError, RedisError):
            log.warning("outlook notifications not queued", extra={"user_id": user_id})
            failed = True
    failed = await _lifecycle(subs, lifecycle) or failed
    if failed:
        raise StorageError("notifications could not be queued")
    return web.Response(status=202)


async def lifecycle(request: web.Request, subs: Subscriptions) -> web.Response:
    answer = validation(request)
    if answer is not None:
        return answer
    items = await items_of(request)
    owners = await _owners(subs, items)
    pairs = [(u, i) for i, u in zip(items, owners, strict=True) if u is not None]
    if await _lifecycle(subs, pairs):
        raise StorageError("lifecycle notifications could not be recorded")
    return web.Response(status=202)


async def _lifecycle(subs: Subscriptions, pairs: list[tuple[str, dict[str, Any]]]) -> bool:
    failed = False
    for user_id, item in pairs:
        try:
            await subs.lifecycle(user_id, item)
        except (GatewayError, RedisError):
            log.warning("lifecycle notification not recorded", extra={"user_id": user_id})
            failed = True
    return failed


async def _owners(subs: Subscriptions, items: list[dict[str, Any]]) -> list[str | None]:
    return await subs.owners(items)
