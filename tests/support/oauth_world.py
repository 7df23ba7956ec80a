"""The OAuth world: a real authorization server on TLS, Gmail/Graph stand-ins that introspect
its tokens, and a browser that follows redirects."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from foundation.config import Settings
from routing.plugin import Plugin
from tests.support.authserver import AuthServer, Client
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings, serve
from tests.support.mailapis import MailApis
from tests.support.tlsca import Pki

RETURN_ORIGIN = "https://app.example"
ACCESS_TOKEN_TTL = 900


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

    @asynccontextmanager
    async def gateway(self, tmp_path: Path, *, extra: Sequence[Plugin] = ()) -> AsyncIterator[Gateway]:
        """A gateway on this world's port, its accounts approving every sign-in, with `extra` plugins."""
        await self.auth.control("mode", account="user@example.test", approve=True)
        await self.auth.control("sick", requests=0)
        async with serve(self.settings(tmp_path), port=self.port, extra=extra) as gateway:
            yield gateway


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


async def start_connect(gateway: Gateway, user_id: str, provider: str) -> str:
    body = {"provider": provider, "return_url": f"{RETURN_ORIGIN}/settings?tab=mail"}
    resp = await gateway.admin("POST", f"/admin/v1/users/{user_id}/connect", json=body)
    assert resp.status == 200, await resp.text()
    url: str = (await resp.json())["url"]
    return url


def auth(created: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['server_token']}"}


def statuses(dedicated: DedicatedServer, user_id: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in dedicated.events(user_id) if e["type"] == "connection.status"]
