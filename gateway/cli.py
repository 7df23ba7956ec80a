"""`ally-gateway`: serve, and operator commands.

ally-gateway serve [--role all|web|worker]
ally-gateway keys status|rotate
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import config, logs
from gateway.app import ROLES, create_app
from gateway.devsecrets import with_dev_secrets
from gateway.errors import ConfigError, GatewayError
from gateway.keys import SERVICES

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ally-gateway", description="Ally channel gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (HTTP and background loops)")
    serve.add_argument("--role", choices=ROLES, default="all")
    keys = sub.add_parser("keys", help="master key ring: status or rotate")
    keys.add_argument("action", choices=("status", "rotate"))
    args = parser.parse_args(argv)
    try:
        settings = with_dev_secrets(config.load())
    except ConfigError as exc:
        print(f"ally-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings, args.role)
        return asyncio.run(_keys(settings, args.action))
    except GatewayError as exc:
        print(f"ally-gateway: {logs.scrub(str(exc))}", file=sys.stderr)
        return 1


def _serve(settings: config.Settings, role: str) -> int:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_run(settings, role))
    return 0


async def _run(settings: config.Settings, role: str) -> None:
    app = create_app(settings, role)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if role != "worker":
            site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
            await site.start()
            port = runner.addresses[0][1] if runner.addresses else settings.port
            log.info(
                "listening",
                extra={"host": settings.host, "port": port, "role": role, "public_url": settings.public_url},
            )
        else:
            log.info("worker running", extra={"role": role})
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


async def _keys(settings: config.Settings, action: str) -> int:
    app = create_app(settings, "web")
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        services = app[SERVICES]
        users = await services.registry.user_ids()
        if action == "rotate":
            changed = await services.vault.rotate(users)
            print(f"re-wrapped {changed} data key(s) under {services.vault.active_kid}")
        status = await services.vault.status(users)
        print(f"active kid: {services.vault.active_kid}")
        for kid, count in sorted(status.items()):
            print(f"  {kid}: {count} data key(s)")
        return 0
    finally:
        await runner.cleanup()
