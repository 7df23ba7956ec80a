"""The Telegram channel: one shared bot for every user (contract §3 and §6).

identity   bot id from the token, webhook secrets
wire       the Bot API on the wire (Telegram's JSON in and out, retries)
ratelimit  shared, fair outbound limits in Redis
chats      chat → user routing, link codes, what each user may name
channel    the running channel: bot, limiter, sending, lifecycle
updates    reading an Update: its chat, sender, and what it says about links
moves      chats waiting for their Telegram user to confirm a move to another user
ingress    the webhook, linking and routing of updates
methods    the table of Bot API methods a server may call, and what each parameter names
jsontext   JSON read once and strictly (repeated keys refused)
policy     checking one call against the table and what its user owns
notices    telling chats their assistant is offline, or that messages expired
polling    getUpdates long polling, one poller across all processes (ALLY_TELEGRAM_MODE=polling)
outbound   the server API: Bot API calls and the file proxy
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from foundation import fastpath
from foundation.app_keys import ROLE, SETTINGS
from foundation.tls import client_context
from routing.hooks import Hooks
from routing.plugin import Plugin
from routing.services import Services

from . import ingress, inputs, notices, outbound
from .channel import ALLOWED_UPDATES, TELEGRAM, Telegram
from .identity import identity_of
from .polling import Poller

log = logging.getLogger(__name__)

SEEN_WINDOW_MS = 25 * 3600 * 1000
"""How long an `update_id` stays in the dedup set. Telegram keeps an update it could not deliver
24 hours at most (Bot API, "Getting updates"), so it never sends one again later than that after
the first attempt; an hour more for the clocks. A week, the default, made update ids most of what
Redis holds at high traffic (`bench/README.md`, the Redis Cluster estimate)."""


def setup(app: web.Application) -> Plugin:
    for category in inputs.MALFORMED_PARTS:
        warnings.filterwarnings("error", category=category)
    routes = [
        web.post("/telegram/webhook/{bot_id}", ingress.webhook),
        web.post("/admin/v1/users/{user_id}/telegram/link", ingress.create_link),
        web.get("/v1/telegram/files/{file_id}", outbound.download),
        web.get("/v1/telegram/files/{file_id}/{name}", outbound.download),
        web.post("/v1/telegram/{method}", outbound.call),
    ]
    if not app[SETTINGS].telegram_enabled:
        return Plugin(name="telegram", routes=routes)

    async def summary(user_id: str) -> dict[str, Any]:
        return await _summary(app[TELEGRAM], user_id)

    async def erase(user_id: str) -> None:
        await _erase(app[TELEGRAM], user_id)

    async def link(user_id: str) -> dict[str, Any]:
        return await ingress.new_link(app[TELEGRAM], user_id)

    async def expired(user_id: str, counts: dict[str, int]) -> None:
        await app[TELEGRAM].notices.expired(user_id, counts)

    hooks = Hooks(
        status={"telegram": summary},
        export={"telegram": summary},
        erase={"telegram": erase},
        link={"telegram": link},
        expired={notices.CHANNEL: expired},
    )
    return Plugin(name="telegram", routes=routes, hooks=hooks, start=functools.partial(_lifecycle, app))


@asynccontextmanager
async def _lifecycle(app: web.Application, services: Services) -> AsyncIterator[None]:
    identity = identity_of(services.settings)
    connector = aiohttp.TCPConnector(limit=200, ttl_dns_cache=300, ssl=client_context())
    session = aiohttp.ClientSession(connector=connector, trust_env=False)
    # Web-serving processes own the webhook; workers and operator commands leave it alone.
    polling = services.settings.telegram_mode == "polling"
    register = not polling and app[ROLE] in ("all", "web")
    channel = Telegram(services, identity, session, register_webhook=register)
    app[TELEGRAM] = channel
    app[fastpath.ROUTES].append(ingress.fast_webhook(channel))
    services.handoff.keep_seen("tg", SEEN_WINDOW_MS)
    channel.start()
    poller = None
    if polling and app[ROLE] in ("all", "web", "worker"):
        # Every serving process competes for the one lease, so polling survives any of them dying.
        poller = Poller(
            channel.api,
            services.redis,
            services.keys,
            channel.bot_id,
            functools.partial(ingress.receive, channel),
            lease=services.settings.telegram_poll_lease,
            allowed_updates=ALLOWED_UPDATES,
        )
        poller.start()
    try:
        yield
    finally:
        try:
            if poller is not None:
                await poller.aclose()
            await channel.aclose()
        finally:
            await session.close()


async def _summary(channel: Telegram, user_id: str) -> dict[str, Any]:
    chats = await channel.chats.of_user(user_id)
    return {
        "bot_id": channel.bot_id,
        "private_chat_id": await channel.chats.private_chat(user_id),
        "chats": [info.as_json() for _, info in sorted(chats.items())],
    }


async def _erase(channel: Telegram, user_id: str) -> None:
    await channel.chats.forget_user(user_id)
    await channel.limiter.forget_user(user_id)
