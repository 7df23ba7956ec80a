"""A local OAuth world: oidc-provider over TLS as both Google's and Microsoft's authorization
server, Gmail/Graph stand-ins that introspect its tokens, and a browser that follows redirects."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Settings
from oauth import google, microsoft
from tests.conftest import Gateway, make_settings, wipe
from tests.support import authserver
from tests.support.authserver import AuthServer, Client
from tests.support.dedicated import DedicatedServer
from tests.support.mailapis import MailApis
from tests.support.tlsca import Pki, mint

RETURN_ORIGIN = "https://app.example"
ACCESS_TOKEN_TTL = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class World:
    pki: Pki
    tls: ssl.SSLContext
    auth: AuthServer
    apis: MailApis
    port: int
    google: Client
    microsoft: Client

    def settings(self, tmp_path: Path, **overrides: Any) -> Settings:
        issuer = self.auth.issuer
        base: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{self.port}",
            "allowed_return_origins": (RETURN_ORIGIN,),
            "google_client_id": self.google.client_id,
            "google_client_secret": self.google.client_secret,
            "google_auth_uri": f"{issuer}/auth",
            "google_token_uri": f"{issuer}/token",
            "google_revoke_uri": f"{issuer}/token/revocation",
            "gmail_api_url": self.apis.gmail_root,
            "microsoft_client_id": self.microsoft.client_id,
            "microsoft_client_secret": self.microsoft.client_secret,
            "microsoft_oidc_authority": issuer,
            "graph_api_url": self.apis.graph_root,
        }
        return make_settings(tmp_path, **{**base, **overrides})


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
    await world.auth.control("mode", account="user@example.test", approve=True)
    await world.auth.control("sick", requests=0)
    settings = world.settings(tmp_path)
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=world.port))
    await client.start_server()
    try:
        yield Gateway(client, settings)
    finally:
        await client.close()
        await wipe(settings.key_prefix)


@dataclass
class Browser:
    """Follows redirects one by one like a browser, keeping cookies, until it reaches `stop_at`."""

    tls: ssl.SSLContext
    secure_origin: str
    hops: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Browser:
        jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[self.secure_origin])
        self.session = aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=self.tls))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def open(self, url: str, stop_at: str = RETURN_ORIGIN, limit: int = 20) -> str:
        assert self.session is not None
        for _ in range(limit):
            if url.startswith(stop_at):
                return url
            async with self.session.get(url, allow_redirects=False) as resp:
                headers = {k: v for k, v in resp.headers.items()}
                headers["set-cookie-all"] = " || ".join(resp.headers.getall("Set-Cookie", []))
                self.hops.append((url, resp.status, headers))
                if resp.status not in (301, 302, 303, 307, 308):
                    return f"{resp.status} {url} {await resp.text()}"
                url = urljoin(url, resp.headers["Location"])
        raise AssertionError("too many redirects")


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
