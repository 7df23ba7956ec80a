"""The hostile world's parts: two tenants with every channel linked, and the effects an attack must not have."""

from __future__ import annotations

import dataclasses
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp.test_utils import TestClient

from oauth.connect import COOKIE_PREFIX
from tests.support import telegram as tgs
from tests.support.anthropic import API_KEY, AnthropicStandIn
from tests.support.dedicated import DedicatedServer
from tests.support.google import Google
from tests.support.graph import Graph, GraphSubscription
from tests.support.telegram_gateway import SECRET, TgGateway

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
    gmail: str = ""
    outlook: str = ""
    subscription: GraphSubscription | None = None

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
    token_refreshes: int
    mail_api_calls: int


@dataclasses.dataclass(repr=False)
class World:
    tg: TgGateway
    dedicated: DedicatedServer
    anthropic: AnthropicStandIn
    google: Google
    graph: Graph
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
        return Effects(
            counts,
            len(self.tg.fake.calls),
            len(self.anthropic.calls),
            self.google.refreshes,
            len(self.google.calls) + len(self.graph.calls),
        )


async def new_flow(world: World) -> tuple[str, str, str]:
    """A connect flow started in a browser: (state, cookie name, cookie value)."""
    if not await world.tg.services.registry.exists(USER):
        await world.tg.create_user(world.dedicated, USER)
    resp = await world.tg.admin(
        "POST", f"/admin/v1/users/{USER}/connect", json={"provider": "google", "return_url": RETURN_URL}
    )
    assert resp.status == 200, await resp.text()
    path = urlsplit((await resp.json())["url"]).path
    resp = await world.client.get(path, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
    jar: SimpleCookie = SimpleCookie()
    jar.load(resp.headers["Set-Cookie"])
    (name, morsel), *_ = jar.items()
    assert name.startswith(COOKIE_PREFIX) and morsel["httponly"] and morsel["secure"]
    return state, name, morsel.value


USER = "dora"


RETURN_URL = f"{RETURN_ORIGIN}/settings/connections?tab=mail"
