"""The Gmail channel: Pub/Sub push ingress and the `users.watch` lifecycle (contract §4, §6).

Email content never passes through here: the user's server receives the mailbox
change (`gmail.notification`: address and historyId) and fetches mail itself with
a token from the broker.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from channels.gmail import push
from channels.gmail.api import GmailApi
from channels.gmail.oidc import PushVerifier
from channels.gmail.watches import Watches
from channels.renewal import Timing, upkeep_plugin
from channels.tokens import BrokerTokens
from foundation.app_keys import SETTINGS
from foundation.schedule import DueSet
from oauth.broker import BROKER
from routing.plugin import Plugin
from routing.services import Services

log = logging.getLogger(__name__)


@dataclass
class Gmail:
    verifier: PushVerifier
    watches: Watches
    api: GmailApi


GMAIL = web.AppKey("gmail", Gmail)
GMAIL_TIMING = web.AppKey("gmail_timing", Timing)


async def _push(request: web.Request) -> web.Response:
    gmail = request.app[GMAIL]
    return await push.handle(request, gmail.verifier, gmail.watches)


@asynccontextmanager
async def _lifecycle(app: web.Application, services: Services) -> AsyncIterator[None]:
    settings = services.settings
    timing = app.get(GMAIL_TIMING, Timing())
    api = GmailApi(settings.gmail_api_url)
    due = DueSet(services.redis, services.keys, "gmail", lease=timing.lease)
    watches = Watches(services, api, BrokerTokens(app[BROKER]), due, topic=settings.gmail_pubsub_topic)
    verifier = PushVerifier(
        services.session,
        settings.google_certs_url,
        settings.gmail_push_audience,
        settings.gmail_push_service_account,
    )
    app[GMAIL] = Gmail(verifier, watches, api)
    if settings.google_enabled and not verifier.configured:
        log.warning("gmail pushes cannot be verified: ALLY_GMAIL_PUSH_AUDIENCE or _SERVICE_ACCOUNT unset")
    try:
        yield
    finally:
        api.close()


def setup(app: web.Application) -> Plugin:
    settings = app[SETTINGS]
    return upkeep_plugin(
        Watches,
        lambda: app[GMAIL].watches,
        lambda: app.get(GMAIL_TIMING, Timing()),
        enabled=settings.google_enabled and bool(settings.gmail_pubsub_topic),
        loop="gmail-watch",
        routes=[web.post("/gmail/push", _push)],
        start=functools.partial(_lifecycle, app),
    )
