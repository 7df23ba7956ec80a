"""`ally-gateway user create|show|link|export|delete`: the admin API for operators without an HTTP client.

Every command prints JSON on stdout (what the admin API would answer) and exits 0;
a refused request prints `ally-gateway: <code>: <detail>` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import users
from gateway.commands.context import operator_app
from gateway.config import Settings
from gateway.errors import ApiError, BadRequest
from gateway.keys import SERVICES
from gateway.services import Services

Action = Callable[[web.Application, Services, argparse.Namespace], Awaitable[tuple[Any, int]]]


def add(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("user", help="create, show, link, export or erase a user")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="register a user's dedicated server (or update it)")
    create.add_argument("user_id")
    create.add_argument("--server-url", required=True)
    create.add_argument("--public-key", required=True, help="the server's X25519 public key, base64url")
    create.set_defaults(action_fn=_create)
    for name, fn, text in (
        ("show", _show, "status: server health, queue, channels (or erasure progress)"),
        ("export", _export, "everything the gateway holds about the user, as JSON"),
        ("link", _link, "a one-use Telegram deep link for the user (15 minutes)"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("user_id")
        p.set_defaults(action_fn=fn)
    delete = actions.add_parser("delete", help="erase the user: revoke, unsubscribe, delete every key")
    delete.add_argument("user_id")
    delete.add_argument(
        "--no-wait", action="store_true", help="return once recorded; a running gateway worker finishes it"
    )
    delete.set_defaults(action_fn=_delete)
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        result, status = asyncio.run(_main(settings, args))
    except ApiError as exc:
        print(f"ally-gateway: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return status


async def _main(settings: Settings, args: argparse.Namespace) -> tuple[Any, int]:
    users.check_user_id(args.user_id)
    async with operator_app(settings) as app:
        action: Action = args.action_fn
        return await action(app, app[SERVICES], args)


async def _create(_app: web.Application, services: Services, args: argparse.Namespace) -> tuple[Any, int]:
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


async def _show(_app: web.Application, services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    progress = await users.erasure(services, args.user_id)
    if progress is not None:
        return {"user_id": args.user_id, "status": "erasing", "erasure": progress}, 0
    return await users.status(services, args.user_id), 0


async def _export(_app: web.Application, services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    return await users.export(services, args.user_id), 0


async def _link(app: web.Application, services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    await users.require_active(services, args.user_id)
    linker = services.hooks.link.get("telegram")
    if linker is None:
        raise BadRequest("telegram_disabled", "the Telegram channel is off (ALLY_TELEGRAM_BOT_TOKEN is unset)")
    return await linker(args.user_id), 0


async def _delete(_app: web.Application, services: Services, args: argparse.Namespace) -> tuple[Any, int]:
    progress = await users.erase(services, args.user_id)
    if args.no_wait:
        return {"user_id": args.user_id, "status": "erasing", "erasure": progress}, 0
    await services.eraser.wait(args.user_id)
    remaining = await users.erasure(services, args.user_id)
    if remaining is not None:
        # Another process holds the erasure (a running gateway); it finishes it.
        return {"user_id": args.user_id, "status": "erasing", "erasure": remaining}, 0
    return {"user_id": args.user_id, "status": "erased"}, 0
