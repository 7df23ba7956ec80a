"""`ally-gateway keys status|rotate`: the master key ring and the data keys it wraps."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from foundation.config import Settings


def add(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("keys", help="master key ring: status or rotate")
    parser.add_argument("action", choices=("status", "rotate"))
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_keys(settings, args.action))


async def _keys(settings: Settings, action: str) -> int:
    from gateway.commands.context import operator_services

    # The key ring is the core's: no channel is needed to re-wrap or count data keys.
    async with operator_services(settings, ()) as services:
        users = await services.registry.user_ids()
        if action == "rotate":
            changed = await services.vault.rotate(users)
            print(f"re-wrapped {changed} data key(s) under {services.vault.active_kid}")
        status = await services.vault.status(users)
        print(f"active kid: {services.vault.active_kid}")
        for kid, count in sorted(status.items()):
            print(f"  {kid}: {count} data key(s)")
        return 0
