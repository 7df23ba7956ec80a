"""`ally-gateway`: serve, and operator commands (`gateway/commands/`, one module per group).

ally-gateway serve [--role all|web|worker] [--workers N]
ally-gateway doctor
ally-gateway keys status|rotate
ally-gateway user create|show|link|export|rotate|delete <user_id>

Only what a command needs is imported: `--help` and the parser import no part of the gateway,
`serve` imports the app when it starts, and each command imports its own parts when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from foundation import config, logs
from foundation.config import MAX_WORKERS
from foundation.devsecrets import with_dev_secrets
from foundation.errors import ConfigError, GatewayError
from foundation.types import ROLES
from gateway.commands import doctor, master_keys, user


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ally-gateway", description="Ally channel gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (HTTP and background loops)")
    serve.add_argument("--role", choices=ROLES, default="all")
    serve.add_argument(
        "--workers",
        type=_processes,
        metavar="N",
        help="processes sharing the port, each a whole gateway of the role (default ALLY_WORKERS, else 1)",
    )
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
            return _serve(settings, args.role, args.workers or settings.workers)
        status: int = args.run(settings, args)
        return status
    except GatewayError as exc:
        print(f"ally-gateway: {logs.scrub(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        # E.g. the port is taken: one line, like every other start-up failure.
        print(f"ally-gateway: {logs.scrub(str(exc))}", file=sys.stderr)
        return 1


def _serve(settings: config.Settings, role: str, workers: int) -> int:
    from gateway import serving

    return serving.serve(settings, role, workers)


def _processes(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}, got {value!r}")
    return number


def _at_least_warning(level: str) -> str:
    return level if level in ("WARNING", "ERROR") else "WARNING"
