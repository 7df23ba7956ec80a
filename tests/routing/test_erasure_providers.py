"""Erasure against provider stand-ins: grants are revoked at the provider, and a provider that is
down does not hold up the local erasure (the revocation is recorded, anonymously, and retried)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from foundation.config import Settings
from oauth.providers import Grant
from oauth.store import Tokens
from tests.support.dedicated import DedicatedServer
from tests.support.erasure import unique, wait_gone
from tests.support.gateway import Gateway, make_settings
from tests.support.redisdump import containing, dump

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.modify"


@dataclass
class GoogleRevoke:
    """Google's revoke endpoint: form `token=...`; 200 with an empty body, or 400 invalid_token."""

    down: bool = False
    revoked: list[str] = field(default_factory=list)
    attempts: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.attempts += 1
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        token = str(form.get("token", ""))
        if token in self.revoked:
            return web.json_response(
                {"error": "invalid_token", "error_description": "Token expired or revoked"}, status=400
            )
        self.revoked.append(token)
        return web.Response(status=200, content_type="application/json", text="{}")


@pytest.fixture
async def google() -> AsyncIterator[tuple[GoogleRevoke, str]]:
    revoke = GoogleRevoke()
    app = web.Application()
    app.router.add_post("/revoke", revoke.handle)
    server = TestServer(app, port=0)
    await server.start_server()
    try:
        yield revoke, str(server.make_url("/revoke"))
    finally:
        await server.close()


@pytest.fixture
def settings(tmp_path: Path, google: tuple[GoogleRevoke, str]) -> Settings:
    return make_settings(
        tmp_path,
        google_client_id="client-google.apps.googleusercontent.com",
        google_client_secret="GOCSPX-erasure-test-secret",
        google_revoke_uri=google[1],
    )


async def connect_google(gateway: Gateway, user_id: str, refresh: str) -> None:
    tokens = Tokens(
        access_token=f"ya29.a0Af{refresh[-12:]}access",
        expires_at=time.time() + 3600,
        refresh_token=refresh,
        scopes=("openid", GMAIL_SCOPE),
    )
    await gateway.broker.connected(user_id, "google", Grant(account=f"{user_id}@example.com", tokens=tokens))


async def test_erasure_revokes_the_grant_at_google(
    gateway: Gateway, dedicated: DedicatedServer, google: tuple[GoogleRevoke, str]
):
    revoke, _ = google
    user = unique("revoked")
    await gateway.create_user(dedicated, user)
    await connect_google(gateway, user, "1//0gRevokeMe-" + user)
    assert (await gateway.admin("DELETE", f"/admin/v1/users/{user}")).status == 202
    await wait_gone(gateway, user)
    assert revoke.revoked == ["1//0gRevokeMe-" + user]
    snapshot = await dump(gateway.services.redis, gateway.settings.key_prefix)
    assert containing(snapshot, user.encode()) == []
    assert containing(snapshot, b"1//0gRevokeMe") == []


async def test_google_down_does_not_stop_the_erasure_and_the_revocation_is_retried(
    gateway: Gateway, dedicated: DedicatedServer, google: tuple[GoogleRevoke, str]
):
    revoke, _ = google
    revoke.down = True
    user = unique("unlucky")
    await gateway.create_user(dedicated, user)
    await connect_google(gateway, user, "1//0gLater-" + user)
    assert (await gateway.admin("DELETE", f"/admin/v1/users/{user}")).status == 202
    await wait_gone(gateway, user)
    assert revoke.attempts >= 1
    assert revoke.revoked == []
    # Owed to Google, recorded without the user: no key or value names them, the token is sealed.
    revocations = gateway.broker.revocations
    assert await revocations.pending() == 1
    snapshot = await dump(gateway.services.redis, gateway.settings.key_prefix)
    assert containing(snapshot, user.encode()) == []
    assert containing(snapshot, b"1//0gLater") == []

    revoke.down = False
    assert await revocations.run_once(now=time.time() + 3600) == 1
    assert revoke.revoked == ["1//0gLater-" + user]
    assert await revocations.pending() == 0
