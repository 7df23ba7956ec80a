"""One gateway with every channel on, two tenants with real state, and the stand-ins they use.

Alice and Bob each have a registered server, a linked private chat, a linked group, a file
and a callback query their chats produced, a Gmail connection with its watch and an Outlook
connection with its Graph subscription. Hostile tests aim at one tenant's data with the
other's credential, or at the public endpoints with garbage, and then check that nothing
happened: no event queued (`events_in` counters), no Bot API call, no model call, no token
refreshed and no Graph or Gmail call.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.gmail import GMAIL_TIMING
from channels.outlook import OUTLOOK_TIMING
from channels.telegram.ratelimit import Limiter, Limits
from gateway.app import create_app
from tests.hostile.world import MODEL, RETURN_ORIGIN, Tenant, World
from tests.support import telegram as tgs
from tests.support.anthropic import API_KEY, AnthropicStandIn, Step, message, stream
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import wipe
from tests.support.google import Google
from tests.support.graph import Graph
from tests.support.mail import FAST, connect_gmail, connect_outlook, mail_settings
from tests.support.ports import free_port
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, TgGateway


async def _tenant(tg: TgGateway, dedicated: DedicatedServer, user_id: str, tg_id: int, group_id: int) -> Tenant:
    created = await tg.create_user(dedicated, user_id)
    person = tgs.person(tg_id, user_id.title(), user_id)
    await tg.link_private(dedicated, user_id, person)
    group = tgs.group_chat(group_id, f"{user_id.title()}'s family")
    resp = await tg.post_update(tgs.chat_member(group, person, "left", "member"))
    assert resp.status == 200, await resp.text()
    photo = tg.fake.add_file(os.urandom(64), f"photos/{user_id}.jpg")
    resp = await tg.post_update(
        tgs.message(tgs.private_chat(person), person, photo=[{**photo, "width": 90, "height": 67}])
    )
    assert resp.status == 200, await resp.text()
    query_id = str(int.from_bytes(os.urandom(7), "big"))
    callback = {
        "update_id": tgs.next_update_id(),
        "callback_query": {
            "id": query_id,
            "from": person,
            "chat_instance": str(tg_id * 7),
            "data": "yes",
            "message": {
                "message_id": 5,
                "from": tgs.BOT_USER,
                "chat": tgs.private_chat(person),
                "date": 1_700_000_000,
                "text": "Pick one",
            },
        },
    }
    resp = await tg.post_update(callback)
    assert resp.status == 200, await resp.text()
    await dedicated.wait_for(
        lambda: (
            sum(e["type"] == "telegram.linked" for e in dedicated.events(user_id)) >= 2
            and sum(e["type"] == "telegram.update" for e in dedicated.events(user_id)) >= 2
        )
    )
    return Tenant(
        user_id,
        created["server_token"],
        created["webhook_secret"],
        person,
        group,
        str(photo["file_id"]),
        query_id,
    )


def answers() -> Step:
    """The model answers what it is asked: a stream when the request says so, else a message."""
    whole, streamed = message("Hi"), stream(("Hi", "!"))

    async def step(request: web.Request, api: AnthropicStandIn) -> web.StreamResponse:
        body = await request.json()
        return await (streamed if body.get("stream") is True else whole)(request, api)

    return step


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def _connect_mail(world: World, tenant: Tenant) -> None:
    gw = world.tg
    tenant.gmail = await connect_gmail(gw, world.google, world.dedicated, tenant.user_id)
    tenant.outlook = await connect_outlook(gw, world.graph, world.dedicated, tenant.user_id)
    # The Graph stand-in knows a mailbox by its owner's id, which is the user id here.
    await wait_until(lambda: len(world.graph.of(tenant.user_id)) == 1)
    tenant.subscription = world.graph.of(tenant.user_id)[0]
    await wait_until(lambda: world.google.mailboxes[tenant.gmail].watch is not None)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake, dedicated, anthropic, google, graph = FakeTelegram(), DedicatedServer(), AnthropicStandIn(), Google(), Graph()
    parts = (fake, dedicated, anthropic, google, graph)
    for part in parts:
        await part.start()
    anthropic.plan(MODEL, answers())
    port = free_port()
    settings = mail_settings(
        tmp_path_factory.mktemp("hostile"),
        google,
        graph,
        port,
        telegram_bot_token=fake.token,
        telegram_webhook_secret=SECRET,
        telegram_api_url=fake.url,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic.url,
        ai_attempts=1,
        ai_backoff=0.0,
        ai_timeout=5.0,
        allowed_return_origins=(RETURN_ORIGIN,),
        # Nothing here may reach Microsoft: an identity provider that refuses every connection.
        microsoft_oidc_authority="https://127.0.0.1:9/ms",
    )
    app = create_app(settings)
    app[GMAIL_TIMING] = app[OUTLOOK_TIMING] = FAST
    # Graph validates the notification URL before it creates a subscription: listen where it points.
    client = TestClient(TestServer(app, port=port))
    await client.start_server()
    tg = TgGateway(client, settings, fake)
    # These tests are about what a request may reach, not about pacing: sends never wait here.
    services = tg.services
    tg.channel.limiter = Limiter(
        services.redis, services.keys, tg.channel.bot_id, Limits(chat_interval=0.001, group_interval=0.001)
    )
    try:
        alice = await _tenant(tg, dedicated, "alice", 111000111, -100111000111)
        bob = await _tenant(tg, dedicated, "bob", 222000222, -100222000222)
        world = World(tg, dedicated, anthropic, google, graph, alice, bob)
        for tenant in (alice, bob):
            await _connect_mail(world, tenant)
        yield world
    finally:
        await client.close()
        await wipe(settings.key_prefix)
        for part in reversed(parts):
            await part.close()
