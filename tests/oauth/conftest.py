"""A local OAuth world: oidc-provider over TLS as both Google's and Microsoft's authorization
server, Gmail/Graph stand-ins that introspect its tokens, and a browser that follows redirects."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from oauth import google, microsoft
from tests.support import authserver
from tests.support.authserver import Client
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.mailapis import MailApis
from tests.support.oauth_world import ACCESS_TOKEN_TTL, Browser, World
from tests.support.ports import free_port
from tests.support.tlsca import Pki, mint


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    minted = mint(tmp_path_factory.mktemp("pki"))
    saved = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    # The gateway trusts a private CA through the standard variables (contract §1).
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(minted.ca_file)
    yield minted
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    port = free_port()
    tls = ssl.create_default_context(cafile=str(pki.ca_file))
    google_client = Client(
        "google-client", "google-secret-0123456789", f"http://127.0.0.1:{port}/oauth/callback/google"
    )
    ms_client = Client(
        "microsoft-client", "microsoft-secret-0123456789", f"http://127.0.0.1:{port}/oauth/callback/microsoft"
    )
    resources = {
        google_client.client_id: {"resource": "https://gmail.googleapis.com/", "scopes": google.SCOPES[1:]},
        ms_client.client_id: {"resource": "https://graph.microsoft.com/", "scopes": microsoft.SCOPES},
    }
    auth = await authserver.start(
        tmp_path_factory.mktemp("oidc"),
        pki,
        [google_client, ms_client],
        resources,
        tls,
        access_token_ttl=ACCESS_TOKEN_TTL,
    )
    apis = MailApis(
        f"{auth.issuer}/token/introspection",
        {"gmail": (google_client.client_id, google_client.client_secret),
         "graph": (ms_client.client_id, ms_client.client_secret)},
        tls,
    )  # fmt: skip
    await apis.start()
    try:
        yield World(pki, tls, auth, apis, port, google_client, ms_client)
    finally:
        await apis.close()
        await auth.close()


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(world: World, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with world.gateway(tmp_path) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def browser(world: World) -> AsyncIterator[Browser]:
    async with Browser(world.tls, f"http://127.0.0.1:{world.port}") as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def dedicated() -> AsyncIterator[DedicatedServer]:
    """The shared fixture, on this module's event loop (the authorization server lives there too)."""
    server = DedicatedServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
