"""Fixtures and helpers for the Gmail and Outlook channel tests: Google and Microsoft Graph
stand-ins, gateways wired to them, and connections made through the real token broker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.gmail import GMAIL_TIMING
from channels.outlook import OUTLOOK_TIMING
from channels.renewal import Timing
from foundation.config import Settings
from gateway.app import create_app
from oauth.providers import Grant
from oauth.store import REAUTH_REQUIRED, Tokens
from tests.support import google as g
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings, wipe
from tests.support.google import Google
from tests.support.graph import Graph
from tests.support.ports import free_port
from tests.support.running import running

FAST = Timing(poll=0.05, lease=2.0, concurrency=8)
GMAIL_SCOPES = ("https://www.googleapis.com/auth/gmail.readonly",)
GRAPH_SCOPES = ("Mail.Read", "offline_access")

GatewayFactory = Callable[..., Awaitable[Gateway]]


def mail_settings(tmp_path: Path, google: Google, graph: Graph, port: int, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        google_client_id="client-id.apps.googleusercontent.com",
        google_client_secret="client-secret",
        google_token_uri=google.token_url,
        google_revoke_uri=google.revoke_url,
        gmail_api_url=google.url("/"),
        gmail_pubsub_topic=g.TOPIC,
        gmail_push_audience=g.PUSH_AUDIENCE,
        gmail_push_service_account=g.PUSH_ACCOUNT,
        google_certs_url=google.certs_url,
        microsoft_client_id="11111111-2222-3333-4444-555555555555",
        microsoft_client_secret="microsoft-client-secret",
        graph_api_url=graph.root,
        public_url=f"http://127.0.0.1:{port}",
        **overrides,
    )


@pytest.fixture
async def google() -> AsyncIterator[Google]:
    async with running(Google()) as server:
        yield server


@pytest.fixture
async def graph() -> AsyncIterator[Graph]:
    async with running(Graph()) as server:
        yield server


@pytest.fixture
async def start_gateway(tmp_path: Path, google: Google, graph: Graph) -> AsyncIterator[GatewayFactory]:
    """Starts gateways sharing one key prefix (like several processes of one deployment); the
    first one started listens on the port ALLY_PUBLIC_URL names, where Graph calls back."""
    clients: list[TestClient[Any, Any]] = []
    port = free_port()
    base = mail_settings(tmp_path, google, graph, port)

    async def start(role: str = "all", timing: Timing = FAST, **overrides: Any) -> Gateway:
        settings = dataclasses.replace(base, **overrides)
        app = create_app(settings, role)
        app[GMAIL_TIMING] = timing
        app[OUTLOOK_TIMING] = timing
        client = TestClient(TestServer(app, port=0 if clients else port))
        await client.start_server()
        clients.append(client)
        return Gateway(client, settings)

    try:
        yield start
    finally:
        for client in reversed(clients):
            await client.close()
        await wipe(base.key_prefix)


@pytest.fixture
async def mail(start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway()


async def connect_gmail(gw: Gateway, google: Google, dedicated: DedicatedServer, user: str) -> str:
    """The user's server is registered and the user connects Gmail (what the OAuth callback stores)."""
    address = f"{user}@gmail.example"
    if not await gw.services.registry.exists(user):
        await gw.create_user(dedicated, user)
    tokens = Tokens(
        access_token=google.mailbox(address),
        expires_at=time.time() + 3599,
        refresh_token=google.refresh_token(address),
        scopes=GMAIL_SCOPES,
    )
    await gw.broker.connected(user, "google", Grant(address, tokens))
    return address


async def connect_outlook(gw: Gateway, graph: Graph, dedicated: DedicatedServer, user: str) -> str:
    account = f"{user}@outlook.example"
    if not await gw.services.registry.exists(user):
        await gw.create_user(dedicated, user)
    tokens = Tokens(access_token=graph.mailbox(user), expires_at=time.time() + 3599, scopes=GRAPH_SCOPES)
    await gw.broker.connected(user, "microsoft", Grant(account, tokens))
    return account


async def expire_access_token(gw: Gateway, user: str, provider: str) -> None:
    """An hour has passed: the stored access token is no longer good, the broker must refresh."""
    store = gw.broker.store
    found = await store.load(user, provider)
    assert found is not None
    connection, tokens = found
    assert await store.update_tokens(connection, dataclasses.replace(tokens, expires_at=0.0))


async def grant_dies(gw: Gateway, user: str, provider: str) -> None:
    """The provider refused the refresh token for good (the broker's own record of it)."""
    store = gw.broker.store
    found = await store.get(user, provider)
    assert found is not None
    assert await store.set_status(found[0], REAUTH_REQUIRED, "invalid_grant")


def events_of(dedicated: DedicatedServer, user: str, prefix: str) -> list[dict[str, Any]]:
    return [e for e in dedicated.events(user) if e["type"].startswith(prefix)]


async def queued_of(gw: Gateway, user: str, prefix: str) -> int:
    """Events of this kind waiting in the user's queue (the envelope's type is not sealed)."""
    entries = await gw.services.redis.xrange(gw.services.keys.queue(user))
    return sum(1 for _id, fields in entries if orjson.loads(fields[b"e"])["type"].startswith(prefix))
