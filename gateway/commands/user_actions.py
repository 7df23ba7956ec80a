"""What each `ally-gateway user` command does, with the parts of the gateway it needs.

`create` and `rotate` touch only the registry: they start the core alone. `link` needs the
Telegram channel; `show`, `export` and `delete` need every part's status, export or erasure
hook, so they start them all.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from foundation.config import Settings
from foundation.errors import BadRequest
from gateway import users
from gateway.app import PLUGINS
from gateway.commands.context import operator_services
from routing.access import check_user_id, require_active
from routing.services import Services

Action = Callable[[Services, argparse.Namespace], Awaitable[tuple[Any, int]]]


async def main(settings: Settings, args: argparse.Namespace) -> tuple[Any, int]:
    check_user_id(args.user_id)
    action, parts = ACTIONS[args.action]
    async with operator_services(settings, parts) as services:
        return await action(services, args)


async def _create(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    user, credentials = await users.register(services, args.user_id, args.server_url, args.public_key)
    if credentials is None:
        return {"user_id": user.user_id, "server_url": user.server_url, "created": False}, 0
    return {
        "user_id": user.user_id,
        "server_url": user.server_url,
        "created": True,
        "server_token": credentials.server_token,
        "webhook_secret": credentials.webhook_secret,
    }, 0


async def _show(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    progress = await users.erasure(services, args.user_id)
    if progress is not None:
        return {"user_id": args.user_id, "status": "erasing", "erasure": progress}, 0
    return await users.status(services, args.user_id), 0


async def _export(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    return await users.export(services, args.user_id), 0


async def _link(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    await require_active(services, args.user_id)
    linker = services.hooks.link.get("telegram")
    if linker is None:
        raise BadRequest("telegram_disabled", "the Telegram channel is off (ALLY_TELEGRAM_BOT_TOKEN is unset)")
    return await linker(args.user_id), 0


async def _rotate(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    return await users.rotate(services, args.user_id, args.overlap), 0


async def _delete(services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    progress = await users.erase(services, args.user_id)
    if args.no_wait:
        return {"user_id": args.user_id, "status": "erasing", "erasure": progress}, 0
    await services.eraser.wait(args.user_id)
    remaining = await users.erasure(services, args.user_id)
    if remaining is not None:
        # Another process holds the erasure (a running gateway); it finishes it.
        return {"user_id": args.user_id, "status": "erasing", "erasure": remaining}, 0
    return {"user_id": args.user_id, "status": "erased"}, 0


ACTIONS: dict[str, tuple[Action, tuple[str, ...]]] = {
    "create": (_create, ()),
    "rotate": (_rotate, ()),
    "link": (_link, ("channels.telegram",)),
    "show": (_show, PLUGINS),
    "export": (_export, PLUGINS),
    "delete": (_delete, PLUGINS),
}
