"""Operations endpoints (contract §8): /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from foundation import metrics
from foundation.app_keys import SETTINGS
from foundation.errors import Unauthorized
from foundation.http import bearer, constant_time_equal, json_response
from routing.services import SERVICES, Services


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
    # The topology as the refresh last read it (every few seconds, foundation/replication.py).
    if services.replication.read_at is None:
        # Redis did not answer at start, and the refresh has not read it since.
        return json_response({"status": "starting", "redis": "up"}, status=503)
    lacking = services.replication.lacking()
    if lacking:
        # Acknowledged writes wait for replicas these primaries do not have: they would all 503.
        wanted = services.replication.wanted
        missing = {"ack_replicas": wanted, "primaries_lacking_replicas": [s.primary for s in lacking]}
        return json_response({"status": "unavailable", "redis": "up", **missing}, status=503)
    unreplicated = services.replication.unreplicated()
    if unreplicated:
        # After a failover: served, but a second failure there would lose writes (§9.9).
        primaries = [s.primary for s in unreplicated]
        return json_response({"status": "ready", "redis": "up", "primaries_without_replica": primaries})
    return json_response({"status": "ready", "redis": "up"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    _require_metrics_access(request)
    services = request.app.get(SERVICES)
    if services is not None:
        # The counters still answer when Redis does not; gauges keep their last sample.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await _sample(services)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            metrics.ERASURES.set(await services.eraser.finished())
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _require_metrics_access(request: web.Request) -> None:
    """In production the metrics need `ALLY_METRICS_TOKEN` or the admin token (contract §9.3)."""
    settings = request.app[SETTINGS]
    if not settings.production:
        return
    offered = bearer(request)
    accepted = [t for t in (settings.metrics_token, settings.admin_token) if t]
    # Compared with every accepted token, so the time taken does not tell which one came close.
    if sum(constant_time_equal(offered, token) for token in accepted) == 0:
        raise Unauthorized("unauthorized", "metrics token required")


async def _sample(services: Services) -> None:
    """Two commands whatever the number of users: the queue totals are written by the delivery
    worker's sweep (`routing/sweep.py`), not counted here."""
    pipe = services.redis.pipeline(transaction=False)
    pipe.zcard(services.keys.due)
    pipe.hmget(services.keys.queue_stats, ["depth", "oldest_ms"])
    due, (depth, oldest_ms) = await pipe.execute()
    metrics.QUEUE_USERS_DUE.set(due)
    metrics.QUEUE_DEPTH.set(int(depth or 0))
    metrics.QUEUE_OLDEST_AGE.set(max(0.0, time.time() - int(oldest_ms) / 1000) if oldest_ms else 0)


ROUTES = (web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_endpoint))
