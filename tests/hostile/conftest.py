"""One gateway with every channel on, two tenants with real state, and the stand-ins they use.

Alice and Bob each have a registered server, a linked private chat, a linked group, a file
and a callback query their chats produced. Hostile tests aim at one tenant's data with the
other's credential, or at the public endpoints with garbage, and then check that nothing
happened: no event queued (`events_in` counters), no Bot API call, no model call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.ratelimit import Limiter, Limits
from gateway.app import create_app
from tests.channels.conftest import SECRET, TgGateway, tg_settings
from tests.conftest import wipe
from tests.support import telegram as tgs
from tests.support.anthropic import API_KEY, AnthropicStandIn, Step, message, stream
from tests.support.dedicated import DedicatedServer
from tests.support.telegram import FakeTelegram

RETURN_ORIGIN = "https://app.example"
MODEL = "claude-sonnet-5-5"


@dataclasses.dataclass
class Tenant:
    user_id: str
    token: str
    webhook_secret: str
    person: dict[str, Any]
    group: dict[str, Any]
    file_id: str
    callback_query_id: str

    @property
    def private_chat(self) -> int:
        return int(self.person["id"])

    @property
    def group_chat(self) -> int:
        return int(self.group["id"])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclasses.dataclass(frozen=True)
class Effects:
    """What a request could have caused somewhere: events queued per user, calls at the stand-ins."""

    events_in: dict[str, int]
    bot_api_calls: int
    model_calls: int


@dataclasses.dataclass(repr=False)
class World:
    tg: TgGateway
    dedicated: DedicatedServer
    anthropic: AnthropicStandIn
    alice: Tenant
    bob: Tenant

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints the arguments of a failing example; the stand-ins' call logs are noise.
        printer.text("World(alice, bob)")

    @property
    def client(self) -> TestClient[Any, Any]:
        return self.tg.client

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """Values that must never appear in any answer or header."""
        settings = self.tg.settings
        values = [
            tgs.TOKEN,
            tgs.TOKEN.split(":")[1],
            SECRET,
            API_KEY,
            settings.admin_token or "",
            *(t.token for t in (self.alice, self.bob)),
            *(t.webhook_secret for t in (self.alice, self.bob)),
            *(k.key.hex() for k in settings.master_keys),
        ]
        return tuple(v.encode() for v in values if v)

    async def effects(self) -> Effects:
        redis = self.tg.services.redis
        keys = self.tg.services.keys
        counts = {}
        for tenant in (self.alice, self.bob):
            raw = await redis.hget(keys.counters(tenant.user_id), "events_in")
            counts[tenant.user_id] = int(raw or 0)
        return Effects(counts, len(self.tg.fake.calls), len(self.anthropic.calls))


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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake, dedicated, anthropic = FakeTelegram(), DedicatedServer(), AnthropicStandIn()
    for part in (fake, dedicated, anthropic):
        await part.start()
    anthropic.plan(MODEL, answers())
    settings = tg_settings(
        tmp_path_factory.mktemp("hostile"),
        fake,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic.url,
        ai_attempts=1,
        ai_backoff=0.0,
        ai_timeout=5.0,
        google_client_id="hostile-client.apps.googleusercontent.com",
        google_client_secret="hostile-google-secret",
        allowed_return_origins=(RETURN_ORIGIN,),
    )
    client = TestClient(TestServer(create_app(settings), port=0))
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
        yield World(tg, dedicated, anthropic, alice, bob)
    finally:
        await client.close()
        await wipe(settings.key_prefix)
        for part in (anthropic, dedicated, fake):
            await part.close()
