"""The Outlook channel: Microsoft Graph change notifications and the subscription lifecycle
(contract §4, §6). Mail content never passes through here: the user's server receives the
notification item and fetches the message itself with a token from the broker."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from channels.outlook import ingress
from channels.outlook.graph import Graph
from channels.outlook.subscriptions import Subscriptions
from channels.renewal import Timing, upkeep_plugin
from channels.tokens import BrokerTokens
from foundation.app_keys import SETTINGS
from foundation.schedule import DueSet
from oauth.broker import BROKER
from routing.plugin import Plugin
from routing.services import Services


@dataclass
class Outlook:
    subscriptions: Subscriptions
    graph: Graph


OUTLOOK = web.AppKey("outlook", Outlook)
OUTLOOK_TIMING = web.AppKey("outlook_timing", Timing)


async def _notify(request: web.Request) -> web.Response:
    return await ingress.notify(request, request.app[OUTLOOK].subscriptions)


async def _lifecycle_route(request: web.Request) -> web.Response:
    return await ingress.lifecycle(request, request.app[OUTLOOK].subscriptions)


@asynccontextmanager
async def _lifecycle(app: web.Application, services: Services) -> AsyncIterator[None]:
    settings = services.settings
    timing = app.get(OUTLOOK_TIMING, Timing())
    graph = Graph(services.session, settings.graph_api_url)
    due = DueSet(services.redis, services.keys, "outlook", lease=timing.lease)
    subs = Subscriptions(services, graph, BrokerTokens(app[BROKER]), due, public_url=settings.public_url)
    app[OUTLOOK] = Outlook(subs, graph)
    yield


def setup(app: web.Application) -> Plugin:
    return upkeep_plugin(
        Subscriptions,
        lambda: app[OUTLOOK].subscriptions,
        lambda: app.get(OUTLOOK_TIMING, Timing()),
        enabled=app[SETTINGS].microsoft_enabled,
        loop="outlook-subscription",
        routes=[web.post("/outlook/notify", _notify), web.post("/outlook/lifecycle", _lifecycle_route)],
        start=functools.partial(_lifecycle, app),
    )
