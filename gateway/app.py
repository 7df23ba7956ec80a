"""The application factory and the process lifecycle: the one composition root.

`create_app(settings, role)` builds the aiohttp app. Each plugin module in `PLUGINS` is asked
for its `Plugin` (`setup(app)`, `routing/plugin.py`), and the root adds its own (the ops, admin
and server API routes, the erasure loop): every plugin's routes are added, and their hooks and
loops merged into read-only mappings in order of name, before anything starts.
Start-up (in order): the embedded Redis when no ALLY_REDIS_URL, the Redis client, the vault,
registry, hand-off, delivery worker and eraser (`Services`, holding the merged hooks and loops),
the OAuth broker; then each plugin's own start, given the services, in order of plugin name;
then the background loops (worker role). Clean-up runs in reverse. The order of `PLUGINS`
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import fastpath, logs
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
from routing.hooks import Hooks, Loop, merged
from routing.outage import Outages
from routing.plugin import Plugin
from routing.registry import Registry
from routing.services import SERVICES, Services
from routing.urls import public_only_connector

log = logging.getLogger(__name__)

# The plugins: channels, the OAuth connect flow and the AI relay. Each module has
# `setup(app) -> Plugin`; the order here changes nothing (everything is taken in order of name).
PLUGINS: tuple[str, ...] = ("channels.telegram", "oauth.web", "ai.relay", "channels.gmail", "channels.outlook")

OPERATOR = "operator"
"""The role of `ally-gateway` operator commands: every part and hook, no serving, no background loops."""
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Assembly:
    """The app's plugins in order of name, with their hooks and loops merged and read-only."""

    plugins: tuple[Plugin, ...]
    hooks: Hooks
    loops: Mapping[str, Loop]

    @classmethod
    def of(cls, plugins: Iterable[Plugin]) -> Assembly:
        ordered = tuple(sorted(plugins, key=lambda plugin: plugin.name))
        names = [plugin.name for plugin in ordered]
        if len(set(names)) != len(names):
            raise ValueError(f"two plugins share a name: {names}")
        return cls(ordered, Hooks.merge(p.hooks for p in ordered), merged("loop", (p.loops for p in ordered)))


def create_app(
    settings: Settings, role: str = "all", parts: Sequence[str] | None = None, *, extra: Sequence[Plugin] = ()
) -> web.Application:
    """The app; `parts` narrows the plugin modules set up (an operator command that needs none of
    their hooks imports none of them). Unset: every one in `PLUGINS`, read at call time. `extra`
    adds plugins given as values (a test's own routes or hooks)."""
    if role not in (*ROLES, OPERATOR):
        raise ValueError(f"role must be one of {ROLES}")
    app = web.Application(middlewares=[head_deadline_middleware, errors_middleware], client_max_size=MAX_BODY)
    app.on_response_prepare.append(stamp_request_id)
    app[SETTINGS] = settings
    app[ROLE] = role
    app[fastpath.ROUTES] = []
    modules = PLUGINS if parts is None else parts
    assembly = Assembly.of([_own(app), *(importlib.import_module(name).setup(app) for name in modules), *extra])
    for plugin in assembly.plugins:
        app.add_routes(plugin.routes)
    app.cleanup_ctx.append(functools.partial(_core, assembly=assembly))
    app.cleanup_ctx.append(_background)
    return app


def _own(app: web.Application) -> Plugin:
    """The root's own part: the ops, admin and server API routes, and the erasure loop."""

    async def erasures() -> None:
        await app[SERVICES].eraser.watch()

    return Plugin(name="gateway", routes=[*ops.ROUTES, *admin.ROUTES, *server_api.ROUTES], loops={"erasure": erasures})


async def _core(app: web.Application, assembly: Assembly) -> AsyncIterator[None]:
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
    # In production every outbound connection (delivery, providers) goes to public addresses only.
    make_connector = public_only_connector if settings.production else aiohttp.TCPConnector
    # No cookie jar: nothing a server or provider answers is carried into a later request (of
    # another user, to the same host), and no request pays for looking cookies up.
    session = aiohttp.ClientSession(
        connector=make_connector(limit=1000, ttl_dns_cache=60, ssl=client_context()),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    services = _services(settings, app[ROLE], redis, session, replication, assembly)
    app[SERVICES] = services
    broker = Broker(
        redis,
        services.keys,
        services.vault,
        services.handoff,
        providers_for(settings, session),
        on_connected=tuple(assembly.hooks.connected.values()),
        on_disconnect=tuple(assembly.hooks.disconnected.values()),
    )
    app[BROKER] = broker
    try:
        async with contextlib.AsyncExitStack() as started:
            for plugin in assembly.plugins:
                if plugin.start is not None:
                    await started.enter_async_context(plugin.start(services))
            yield
    finally:
        topology.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await topology
        await _close_all(
            ("eraser", services.eraser.aclose()),
            ("worker", services.worker.aclose()),
            ("broker", broker.aclose()),
            ("http session", session.close()),
            ("redis", redis.aclose()),
        )
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _services(
    settings: Settings,
    role: str,
    redis: Redis,
    session: aiohttp.ClientSession,
    replication: Replication,
    assembly: Assembly,
) -> Services:
    keys = Keys(settings.key_prefix)
    vault = Vault(redis, keys, settings.master_keys)
    registry = Registry(redis, keys, vault)
    outages = Outages(redis, keys, hold_ttl=settings.hold_ttl, expired=assembly.hooks.expired)
    caps = Caps(settings.queue_max_events, settings.queue_max_bytes)
    worker = DeliveryWorker(
        redis,
        keys,
        registry,
        hold_ttl=settings.hold_ttl,
        timeout=settings.delivery_timeout,
        lease=settings.delivery_lease,
        production=settings.production,
        outages=outages,
        caps=caps,
    )
    # A process that runs a delivery worker delivers what it queues itself; one that does not
    # (web role, operator commands) wakes the others.
    delivers = role in ("all", "worker")
    handoff = Handoff(redis, keys, registry, worker.wake, caps, outages, wake_others=not delivers, adopt=worker.adopt)
    compactor = Compactor(
        redis, keys.global_key("aof"), keys.global_key("aof:gate"), interval=settings.aof_rewrite_interval
    )
    eraser = Eraser(
        redis,
        keys,
        assembly.hooks.erase,
        delivery_wait=settings.delivery_timeout + settings.delivery_lease + 5,
        compactor=compactor,
    )
    return Services(
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
        hooks=assembly.hooks,
        loops=assembly.loops,
    )


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
