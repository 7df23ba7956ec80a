"""`ally-gateway serve`: one process, or `--workers N` processes sharing one port.

One process (the default) runs the app as it always has. With N above 1 the parent first
sets up, once, what the processes share: the listening port (reserved, so `PORT=0` is picked
once and every process listens on it, `SO_REUSEPORT`), the embedded Redis when there is no
`ALLY_REDIS_URL`, and a directory where every process keeps its Prometheus counts, so
`/metrics` answers the sum whichever process takes the scrape. Then it imports the app and
forks N full gateway processes (`foundation.prefork`), each exactly what one process would
be with the same role, and watches them. The configuration was read and checked before any
of this (`gateway.cli`): a bad setting stops the parent before it forks.

Nothing here imports the app, or anything that counts (`foundation.metrics`), at module
level: the metrics must be shared before they are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable

from aiohttp import web

from foundation import logs
from foundation.config import Settings
from foundation.errors import ConfigError, GatewayError
from foundation.prefork import Link, Supervisor

log = logging.getLogger("gateway")

AppFactory = Callable[[Settings, str], web.Application]
Listening = Callable[[int], None]
"""Told the port once every process serves (0 for `--role worker`)."""


def serve(
    settings: Settings,
    role: str,
    workers: int = 1,
    *,
    make_app: AppFactory | None = None,
    listening: Listening | None = None,
) -> int:
    """Serve until `SIGTERM`/`SIGINT` (exit status 0); `listening(port)` once every process serves.
    `make_app` (default `gateway.app.create_app`) builds each process's app."""
    if workers == 1:

        def started(port: int) -> None:
            _announce(settings, role, port)
            if listening is not None:
                listening(port)

        _install_uvloop()
        asyncio.run(run(settings, role, make_app or _create_app(), started))
        return 0
    return _supervise(settings, role, workers, make_app, listening)


async def run(
    settings: Settings, role: str, make_app: AppFactory, started: Listening, *, reuse_port: bool = False
) -> None:
    """One gateway process, until `SIGTERM`/`SIGINT`; `started(port)` once it serves."""
    from foundation import listener

    app = make_app(settings, role)
    runner = await listener.start(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = 0
        if role != "worker":
            site = listener.Site(runner, settings.host, settings.port, reuse_port=reuse_port)
            await site.start()
            port = runner.addresses[0][1] if runner.addresses else settings.port
        started(port)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def _announce(settings: Settings, role: str, port: int, processes: int | None = None) -> None:
    counted = {} if processes is None else {"processes": processes}
    if role != "worker":
        extra = {"host": settings.host, "port": port, "role": role, "public_url": settings.public_url}
        log.info("listening", extra={**extra, **counted})
    else:
        log.info("worker running", extra={"role": role, **counted})


def _supervise(
    settings: Settings, role: str, workers: int, make_app: AppFactory | None, listening: Listening | None
) -> int:
    from foundation.embedded import EmbeddedRedis

    if not sys.platform.startswith("linux"):
        raise ConfigError("--workers (ALLY_WORKERS) above 1 needs Linux: the processes share a port (SO_REUSEPORT)")
    metrics_dir = tempfile.mkdtemp(prefix="ally-metrics-")
    reserved = None
    embedded = None
    try:
        _share_metrics(metrics_dir)
        from foundation import listener

        if role != "worker":
            reserved = listener.reserve_port(settings.host, settings.port)
            settings = dataclasses.replace(settings, port=int(reserved.getsockname()[1]))
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            settings = dataclasses.replace(settings, redis_url=asyncio.run(embedded.start()))
        factory = make_app or _create_app()
        factory(settings, role)  # imports every part once, here, so the processes share them
        shared = settings

        def child(link: Link) -> int:
            if reserved is not None:
                reserved.close()  # the parent keeps its own
            return _child(shared, role, factory, link)

        def ready() -> None:
            _announce(shared, role, shared.port if role != "worker" else 0, workers)
            if listening is not None:
                listening(shared.port if role != "worker" else 0)

        return Supervisor(workers, child, on_ready=ready).run()
    finally:
        if embedded is not None:
            embedded.stop()
        if reserved is not None:
            reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _child(settings: Settings, role: str, make_app: AppFactory, link: Link) -> int:
    _install_uvloop()
    try:
        asyncio.run(run(settings, role, make_app, lambda _port: link.ready(), reuse_port=True))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {logs.scrub(str(exc))}"
        if isinstance(exc, GatewayError | OSError):  # says what is wrong; where is no help
            log.error("process failed", extra={"reason": reason})
        else:
            log.exception("process failed")
        link.failed(reason)
        return 1
    return 0


def _share_metrics(directory: str) -> None:
    """Every process counts into files under `directory` (prometheus_client's multiprocess
    mode); the counts of a process that died stay in the sum, so counters never go back."""
    if "foundation.metrics" in sys.modules:
        raise RuntimeError("the metrics were made before they could be shared: import the app after serve() starts")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _create_app() -> AppFactory:
    from gateway.app import create_app

    return create_app


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
