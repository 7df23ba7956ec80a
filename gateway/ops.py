"""Operations endpoints (contract §8): /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway import metrics
from gateway.http import json_response
from gateway.keys import SERVICES
from gateway.services import Services


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is None:
        return json_response({"status": "starting"}, status=503)
    try:
        await asyncio.wait_for(services.redis.ping(), timeout=1.0)
    except (RedisError, OSError, TimeoutError):
        return json_response({"status": "unavailable", "redis": "down"}, status=503)
    return json_response({"status": "ready", "redis": "up"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is not None:
        # The counters still answer when Redis does not; gauges keep their last sample.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await _sample(services)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _sample(services: Services) -> None:
    r, keys = services.redis, services.keys
    metrics.QUEUE_USERS_DUE.set(await r.zcard(keys.due))
    # Depth and age are sampled over the users scheduled now (bounded cost per scrape).
    users = await r.zrange(keys.due, 0, 499)
    depth, oldest = 0, None
    for raw in users:
        user_id = raw.decode()
        depth += int(await r.xlen(keys.queue(user_id)))
        head = await r.xrange(keys.queue(user_id), "-", "+", count=1)
        if head:
            ms = int(head[0][0].decode().partition("-")[0])
            oldest = ms if oldest is None else min(oldest, ms)
    metrics.QUEUE_DEPTH.set(depth)
    metrics.QUEUE_OLDEST_AGE.set(time.time() - oldest / 1000 if oldest else 0)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
