"""The application factory and the process lifecycle.

`create_app(settings, role)` builds the aiohttp app. Start-up (in order): the
embedded Redis when no ALLY_REDIS_URL, the Redis client, the vault, registry,
hand-off and delivery worker (`Services`), then each channel's own start-up, then
the background loops (worker role). Clean-up runs in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from foundation import logs
from foundation.app_keys import ROLE, SETTINGS
from foundation.compaction import Compactor
from foundation.config import Settings
from foundation.embedded import EmbeddedRedis
from foundation.http import errors_middleware, stamp_request_id
from foundation.listener import head_deadline_middleware
from foundation.redis_keys import Keys
from foundation.replication import Replication
from foundation.storage import connect
from foundation.tls import client_context
from foundation.types import ROLES
from foundation.vault import Vault
from gateway import admin, ops, server_api
from oauth.broker import BROKER, Broker, providers_for
from routing.delivery import DeliveryWorker
from routing.erasure import Eraser
from routing.handoff import Caps, Handoff
from routing.outage import Outages
from routing.registry import Registry
from routing.services import SERVICES, Hooks, Services
from routing.urls import public_only_connector

log = logging.getLogger(__name__)

# The plugins: channels, the OAuth connect flow and the AI relay. Each module has `setup(app)`:
# it adds routes and its own cleanup context (run after the core's).
PLUGINS: tuple[str, ...] = ("channels.telegram", "oauth.web", "ai.relay", "channels.gmail", "channels.outlook")

OPERATOR = "operator"
"""The role of `ally-gateway` operator commands: every part and hook, no serving, no background loops."""
MAX_BODY = 1 << 20


def create_app(settings: Settings, role: str = "all", parts: Sequence[str] | None = None) -> web.Application:
    """The app; `parts` narrows the plugins set up (an operator command that needs none of
    their hooks imports none of them). Unset: every one in `PLUGINS`, read at call time."""
    if role not in (*ROLES, OPERATOR):
        raise ValueError(f"role must be one of {ROLES}")
    app = web.Application(middlewares=[head_deadline_middleware, errors_middleware], client_max_size=MAX_BODY)
    app.on_response_prepare.append(stamp_request_id)
    app[SETTINGS] = settings
    app[ROLE] = role
    app.cleanup_ctx.append(_core)
    ops.setup(app)
    admin.setup(app)
    server_api.setup(app)
    for name in PLUGINS if parts is None else parts:
        importlib.import_module(name).setup(app)
    app.cleanup_ctx.append(_background)
    return app


async def _core(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await embedded.start()
    redis = connect(url, cluster=settings.redis_cluster)
    replication = Replication(redis, settings)
    try:
        await replication.detect()
    except (RedisError, OSError) as exc:
        log.warning("redis topology not read at start", extra={"error": type(exc).__name__})
    topology = asyncio.create_task(replication.watch(), name="redis-topology")
    keys = Keys(settings.key_prefix)
    # In production every outbound connection (delivery, providers) goes to public addresses only.
    make_connector = public_only_connector if settings.production else aiohttp.TCPConnector
    session = aiohttp.ClientSession(
        connector=make_connector(limit=1000, ttl_dns_cache=60, ssl=client_context()), trust_env=False
    )
    vault = Vault(redis, keys, settings.master_keys)
    registry = Registry(redis, keys, vault)
    outages = Outages(redis, keys, hold_ttl=settings.hold_ttl)
    caps = Caps(settings.queue_max_events, settings.queue_max_bytes)
    worker = DeliveryWorker(
        redis,
        keys,
        registry,
        session,
        hold_ttl=settings.hold_ttl,
        timeout=settings.delivery_timeout,
        lease=settings.delivery_lease,
        production=settings.production,
        outages=outages,
        caps=caps,
    )
    # A process that runs a delivery worker delivers what it queues itself; one that does not
    # (web role, operator commands) wakes the others.
    delivers = app[ROLE] in ("all", "worker")
    handoff = Handoff(redis, keys, registry, worker.wake, caps, outages, wake_others=not delivers)
    # The eraser reads the hooks dict live: channels register theirs after the core starts.
    hooks = Hooks()
    compactor = Compactor(
        redis, keys.global_key("aof"), keys.global_key("aof:gate"), interval=settings.aof_rewrite_interval
    )
    eraser = Eraser(
        redis,
        keys,
        hooks.erase,
        delivery_wait=settings.delivery_timeout + settings.delivery_lease + 5,
        compactor=compactor,
    )
    services = Services(
        settings=settings,
        redis=redis,
        keys=keys,
        vault=vault,
        registry=registry,
        handoff=handoff,
        worker=worker,
        outages=outages,
        session=session,
        eraser=eraser,
        replication=replication,
        hooks=hooks,
    )
    services.loops["erasure"] = services.eraser.watch
    app[SERVICES] = services
    broker = Broker(redis, keys, vault, handoff, providers_for(settings, session))
    app[BROKER] = broker
    try:
        yield
    finally:
        topology.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await topology
        await _close_all(
            ("eraser", services.eraser.aclose()),
            ("worker", worker.aclose()),
            ("broker", broker.aclose()),
            ("http session", session.close()),
            ("redis", redis.aclose()),
        )
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _close_all(*steps: tuple[str, object]) -> None:
    """Close everything; log a failing step with its name and go on with the rest."""
    for name, awaitable in steps:
        try:
            await awaitable  # type: ignore[misc]
        except Exception:
            log.exception("clean-up step failed", extra={"step": name})


async def _background(app: web.Application) -> AsyncIterator[None]:
    if app[ROLE] not in ("all", "worker"):
        yield
        return
    services = app[SERVICES]
    tasks: list[asyncio.Task[None]] = []
    # Each background loop logs under its own id (every log line carries one).
    with logs.bound_request_id(logs.new_request_id("delivery")):
        tasks.append(asyncio.create_task(services.worker.run(), name="delivery"))
    for name, loop in services.loops.items():
        with logs.bound_request_id(logs.new_request_id(name)):
            tasks.append(asyncio.create_task(_forever(name, loop), name=name))
    try:
        yield
    finally:
        # Closing first lets the delivery loop leave on its own. Then cancel until they stop: a
        # cancellation that lands while a Redis command or an inner wait completes can be
        # swallowed (redis-py, asyncio.wait_for on 3.11), and a loop would then run on forever.
        with contextlib.suppress(Exception):
            await services.worker.aclose()
        pending = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()


async def _forever(name: str, loop: object) -> None:
    """Run a background loop; if it crashes, log it and start it again after a pause."""
    while True:
        try:
            await loop()  # type: ignore[operator]
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop crashed; restarting", extra={"loop": name})
            await asyncio.sleep(5.0)
