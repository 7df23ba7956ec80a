"""`ally-gateway`: serve, and operator commands (`gateway/commands/`, one module per group).

ally-gateway serve [--role all|web|worker]
ally-gateway doctor
ally-gateway keys status|rotate
ally-gateway user create|show|link|export|rotate|delete <user_id>

Only what a command needs is imported: `--help` and the parser import no part of the gateway,
`serve` imports the app when it starts, and each command imports its own parts when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from foundation import config, logs
from foundation.devsecrets import with_dev_secrets
from foundation.errors import ConfigError, GatewayError
from foundation.types import ROLES
from gateway.commands import doctor, master_keys, user

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ally-gateway", description="Ally channel gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (HTTP and background loops)")
    serve.add_argument("--role", choices=ROLES, default="all")
    for command in (doctor, master_keys, user):
        command.add(sub)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor.run_unconfigured(args)  # a bad configuration is one of the things it reports
    try:
        settings = with_dev_secrets(config.load())
    except ConfigError as exc:
        print(f"ally-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    # Operator commands print their answer on stdout; only warnings and errors go to the log.
    logs.configure(settings.log_level if args.command == "serve" else _at_least_warning(settings.log_level))
    try:
        if args.command == "serve":
            return _serve(settings, args.role)
        status: int = args.run(settings, args)
        return status
    except GatewayError as exc:
        print(f"ally-gateway: {logs.scrub(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        # E.g. the port is taken: one line, like every other start-up failure.
        print(f"ally-gateway: {logs.scrub(str(exc))}", file=sys.stderr)
        return 1


def _serve(settings: config.Settings, role: str) -> int:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_run(settings, role))
    return 0


async def _run(settings: config.Settings, role: str) -> None:
    from foundation import listener
    from gateway.app import create_app

    app = create_app(settings, role)
    runner = await listener.start(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if role != "worker":
            site = listener.Site(runner, settings.host, settings.port)
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


def _at_least_warning(level: str) -> str:
    return level if level in ("WARNING", "ERROR") else "WARNING"
