"""The in-process test gateway: settings for a test, its client, and wiping its keys afterwards."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from foundation.config import MasterKey, Settings
from foundation.storage import connect
from gateway.app import create_app
from oauth.broker import BROKER, Broker
from routing.plugin import Plugin
from routing.services import SERVICES, Services
from tests.support.dedicated import DedicatedServer

REDIS_URL = os.environ.get("ALLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "test-admin-token-0123456789"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        redis_url=REDIS_URL,
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        master_keys=(MasterKey("k1", os.urandom(32)),),
        key_prefix=f"t{uuid.uuid4().hex[:12]}:",
        public_url="http://127.0.0.1:8080",
        allowed_return_origins=("http://127.0.0.1:8080",),
    )
    return dataclasses.replace(base, **overrides)


def every_channel_on(settings: Settings) -> Settings:
    """Every provider configured, so every channel registers its routes."""
    return dataclasses.replace(
        settings,
        telegram_bot_token="123456789:AAEexampleexampleexampleexampleexam",
        telegram_webhook_secret="webhook-secret-for-tests",
        google_client_id="client-id.apps.example",
        google_client_secret="google-client-secret",
        gmail_pubsub_topic="projects/ally-test/topics/gmail",
        gmail_push_audience="https://gateway.example/gmail/push",
        gmail_push_service_account="push@ally-test.iam.example",
        microsoft_client_id="00000000-0000-0000-0000-000000000000",
        microsoft_client_secret="microsoft-client-secret",
        anthropic_api_key="sk-ant-test-key-0000000000",
        anthropic_base_url="http://127.0.0.1:9",
        # Nothing listens there: the channels start, and no call leaves the machine.
        telegram_api_url="http://127.0.0.1:9",
        google_auth_uri="http://127.0.0.1:9/auth",
        google_token_uri="http://127.0.0.1:9/token",
        google_revoke_uri="http://127.0.0.1:9/revoke",
        gmail_api_url="http://127.0.0.1:9/",
        google_certs_url="http://127.0.0.1:9/certs",
        graph_api_url="http://127.0.0.1:9/v1.0",
    )


async def wipe(prefix: str, url: str = REDIS_URL, *, cluster: bool = False) -> None:
    redis = connect(url, cluster=cluster)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        # One key per command: keys of different users live in different cluster slots.
        for key in keys:
            await redis.delete(key)
    finally:
        await redis.aclose()


@dataclasses.dataclass
class Gateway:
    client: TestClient[Any, Any]
    settings: Settings

    @property
    def services(self) -> Services:
        app = self.client.app
        assert app is not None
        services: Services = app[SERVICES]
        return services

    @property
    def broker(self) -> Broker:
        app = self.client.app
        assert app is not None
        broker: Broker = app[BROKER]
        return broker

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.settings.admin_token}", **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def create_user(self, server: DedicatedServer, user_id: str) -> dict[str, Any]:
        return await register_user(self.client, server, user_id, admin_token=self.settings.admin_token)


async def register_user(
    http: TestClient[Any, Any] | aiohttp.ClientSession,
    server: DedicatedServer,
    user_id: str,
    *,
    base: str = "",
    admin_token: str | None = ADMIN_TOKEN,
) -> dict[str, Any]:
    """Create the user on the gateway at `base` (a test client's own when empty), served by
    `server` with a fresh key; `server` is told the webhook secret. The answer: the user's
    `server_token` and `webhook_secret`."""
    body = {"server_url": server.url(user_id), "server_public_key": server.new_user(user_id)}
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with http.put(f"{base}/admin/v1/users/{user_id}", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
    server.secrets[user_id] = [created["webhook_secret"]]
    return created


def random_public_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


@asynccontextmanager
async def serve(
    settings: Settings, role: str = "all", *, port: int = 0, extra: Sequence[Plugin] = ()
) -> AsyncIterator[Gateway]:
    """A gateway app on loopback for one test, with `extra` plugins (its own hooks) besides
    the usual ones; its keys are wiped when it stops."""
    client = TestClient(TestServer(create_app(settings, role, extra=extra), host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield Gateway(client, settings)
    finally:
        await client.close()
        await wipe(settings.key_prefix, settings.redis_url or REDIS_URL, cluster=settings.redis_cluster)
