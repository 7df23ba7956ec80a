"""Redis stopped under a running gateway: every route answers 503 `storage_unavailable` with
`Retry-After` (providers and servers retry), none a 500; and once Redis is back, the next
request on each route family succeeds."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from foundation.config import Settings
from gateway.app import create_app
from tests.support import telegram as tgs
from tests.support.anthropic import API_KEY, AnthropicStandIn
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, random_public_key, register_user
from tests.support.google import Google
from tests.support.graph import Graph
from tests.support.mail import mail_settings
from tests.support.ports import free_port
from tests.support.redis_servers import RedisServer
from tests.support.telegram import FakeTelegram

TG_SECRET = "storage-boundary-webhook-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MESSAGE = {"model": "claude-sonnet-5-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
# Routes that answer without Redis on purpose: liveness, readiness (its own 503 shape) and metrics.
WITHOUT_STORAGE = {"/healthz", "/readyz", "/metrics"}


@dataclasses.dataclass
class Running:
    client: TestClient[Any, Any]
    settings: Settings
    redis: RedisServer
    google: Google
    server_token: str
    connect_session: str


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    stand_ins = (FakeTelegram(), Google(), Graph(), AnthropicStandIn(), DedicatedServer())
    telegram, google, graph, anthropic, dedicated = stand_ins
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    for part in stand_ins:
        await part.start()
    port = free_port()
    settings = mail_settings(
        tmp_path,
        google,
        graph,
        port,
        redis_url=redis.url,
        telegram_bot_token=telegram.token,
        telegram_webhook_secret=TG_SECRET,
        telegram_api_url=telegram.url,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic.url,
        allowed_return_origins=("https://app.example",),
    )
    client = TestClient(TestServer(create_app(settings), port=port))
    await client.start_server()
    try:
        token = (await register_user(client, dedicated, "u1"))["server_token"]
        resp = await client.post(
            "/admin/v1/users/u1/connect",
            json={"provider": "google", "return_url": "https://app.example/done"},
            headers=ADMIN,
        )
        assert resp.status == 200, await resp.text()
        session = (await resp.json())["url"].rsplit("/", 1)[1]
        yield Running(client, settings, redis, google, token, session)
    finally:
        await client.close()
        redis.stop()
        for part in reversed(stand_ins):
            await part.close()


def requests(r: Running) -> dict[tuple[str, str], dict[str, Any]]:
    """One request per route (method, canonical path), each one that would succeed with Redis up."""
    server = {"Authorization": f"Bearer {r.server_token}"}
    push = {"Authorization": f"Bearer {r.google.push_token()}"}
    notification = {"subscriptionId": "sub-1", "clientState": "x", "changeType": "created", "resource": "m/1"}
    user = "/admin/v1/users/{user_id}"
    return {
        ("PUT", user): {
            "path": "/admin/v1/users/u2",
            "json": {"server_url": "http://127.0.0.1:9/u2", "server_public_key": random_public_key()},
        },
        ("GET", user): {"path": "/admin/v1/users/u1"},
        ("DELETE", user): {"path": "/admin/v1/users/u1"},
        ("GET", user + "/export"): {"path": "/admin/v1/users/u1/export"},
        ("POST", user + "/credentials/rotate"): {"path": "/admin/v1/users/u1/credentials/rotate", "json": {}},
        ("POST", user + "/connect"): {
            "path": "/admin/v1/users/u1/connect",
            "json": {"provider": "google", "return_url": "https://app.example/done"},
        },
        ("POST", user + "/telegram/link"): {"path": "/admin/v1/users/u1/telegram/link"},
        ("DELETE", user + "/connections/{provider}"): {"path": "/admin/v1/users/u1/connections/google"},
        ("POST", "/v1/ping"): {"path": "/v1/ping", "headers": server},
        ("GET", "/v1/connections"): {"path": "/v1/connections", "headers": server},
        ("POST", "/v1/connections/{provider}/token"): {"path": "/v1/connections/google/token", "headers": server},
        ("DELETE", "/v1/connections/{provider}"): {"path": "/v1/connections/google", "headers": server},
        ("POST", "/v1/telegram/{method}"): {
            "path": "/v1/telegram/sendMessage",
            "headers": server,
            "json": {"text": "hi"},
        },
        ("GET", "/v1/telegram/files/{file_id}"): {"path": "/v1/telegram/files/BQACAgIAAxkBAAI", "headers": server},
        ("GET", "/v1/telegram/files/{file_id}/{name}"): {
            "path": "/v1/telegram/files/BQACAgIAAxkBAAI/file_0.jpg",
            "headers": server,
        },
        ("POST", "/v1/ai/messages"): {"path": "/v1/ai/messages", "headers": server, "json": MESSAGE},
        ("POST", "/v1/ai/v1/messages"): {"path": "/v1/ai/v1/messages", "headers": server, "json": MESSAGE},
        ("GET", "/v1/ai/usage"): {"path": "/v1/ai/usage", "headers": server},
        ("POST", "/telegram/webhook/{bot_id}"): {
            "path": f"/telegram/webhook/{tgs.BOT_ID}",
            "headers": {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
            "json": tgs.text(tgs.private_chat(tgs.person(5, "Eve", "eve")), tgs.person(5, "Eve", "eve"), "hi"),
        },
        ("POST", "/gmail/push"): {
            "path": "/gmail/push",
            "headers": push,
            "json": Google.push_body("u1@gmail.example", 12345),
        },
        ("POST", "/outlook/notify"): {"path": "/outlook/notify", "json": {"value": [notification]}},
        ("POST", "/outlook/lifecycle"): {
            "path": "/outlook/lifecycle",
            "json": {"value": [{**notification, "lifecycleEvent": "missed"}]},
        },
        ("GET", "/oauth/connect/{session}"): {"path": f"/oauth/connect/{r.connect_session}"},
        ("GET", "/oauth/callback/{provider}"): {
            "path": "/oauth/callback/google",
            "params": {"state": "s" * 43, "code": "4/0Ab"},
        },
    }


def routes(client: TestClient[Any, Any]) -> set[tuple[str, str]]:
    app = client.app
    assert app is not None
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and path not in WITHOUT_STORAGE:
            found.add((route.method, path))
    return found


async def test_every_route_answers_503_storage_unavailable_while_redis_is_stopped(running: Running):
    table = requests(running)
    assert set(table) == routes(running.client), "a route is missing from this table (or gone from the app)"
    running.redis.stop()
    wrong = {}
    for (method, _), request in table.items():
        spec = dict(request)
        path = spec.pop("path")
        headers = {**ADMIN, **spec.pop("headers", {})}
        resp = await running.client.request(method, path, headers=headers, allow_redirects=False, **spec)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        if (
            resp.status != 503
            or not isinstance(body, dict)
            or body.get("error") != "storage_unavailable"
            or int(resp.headers.get("Retry-After", "0")) < 1
        ):
            wrong[f"{method} {path}"] = (resp.status, body)
    assert wrong == {}
    # Redis back: the next request succeeds (no dead pooled connection is handed out).
    running.redis.start()
    resp = await running.client.post("/v1/ping", headers={"Authorization": f"Bearer {running.server_token}"})
    assert resp.status == 200, await resp.text()
