from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foundation.config import Settings
from tests.support.gateway import Gateway, make_settings, random_public_key, serve


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        google_client_id="client-google",
        google_client_secret="secret-google-0123456789",
        allowed_return_origins=("https://app.example",),
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    # The package's gateway lives in its OAuth world; these tests need none of it.
    async with serve(settings) as gateway:
        yield gateway


async def _user(gateway: Gateway, user_id: str) -> str:
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    resp = await gateway.admin("PUT", f"/admin/v1/users/{user_id}", json=body)
    assert resp.status == 201
    token: str = (await resp.json())["server_token"]
    return token


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"provider": "google", "return_url": "https://evil.example/back"}, "invalid_return_url"),
        ({"provider": "google", "return_url": "https://app.example@evil.example/"}, "invalid_return_url"),
        ({"provider": "google", "return_url": "javascript:alert(1)"}, "invalid_return_url"),
        ({"provider": "google", "return_url": 7}, "invalid_return_url"),
        ({"provider": "yahoo", "return_url": "https://app.example/back"}, "unknown_provider"),
        ({"provider": "microsoft", "return_url": "https://app.example/back"}, "provider_not_configured"),
        ({"return_url": "https://app.example/back"}, "unknown_provider"),
    ],
)
async def test_connect_session_refuses_bad_input_with_400(gateway: Gateway, body, code):
    await _user(gateway, "alice")
    resp = await gateway.admin("POST", "/admin/v1/users/alice/connect", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"] == code


async def test_connect_session_is_a_15_minute_url_under_the_public_url(gateway: Gateway):
    await _user(gateway, "alice")
    body = {"provider": "google", "return_url": "https://app.example/settings?tab=mail"}
    resp = await gateway.admin("POST", "/admin/v1/users/alice/connect", json=body)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["url"].startswith(gateway.settings.public_url + "/oauth/connect/")
    assert answer["expires_at"].endswith("Z")


async def test_connect_for_unknown_user_is_404(gateway: Gateway):
    body = {"provider": "google", "return_url": "https://app.example/back"}
    resp = await gateway.admin("POST", "/admin/v1/users/nobody/connect", json=body)
    assert resp.status == 404


async def test_unknown_connect_session_and_state_are_json_errors(gateway: Gateway):
    resp = await gateway.client.get("/oauth/connect/" + "x" * 43, allow_redirects=False)
    assert resp.status == 404
    assert (await resp.json())["error"] == "connect_session_not_found"
    resp = await gateway.client.get("/oauth/callback/google?state=" + "y" * 43 + "&code=abc", allow_redirects=False)
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_state"
    resp = await gateway.client.get("/oauth/callback/yahoo?state=abc", allow_redirects=False)
    assert resp.status == 404


async def test_server_without_connections(gateway: Gateway):
    token = await _user(gateway, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    resp = await gateway.client.get("/v1/connections", headers=auth)
    assert resp.status == 200
    assert await resp.json() == []
    resp = await gateway.client.post("/v1/connections/google/token", headers=auth, json={"min_ttl": 60})
    assert resp.status == 404
    assert (await resp.json())["error"] == "connection_not_found"
    for bad in ({"min_ttl": -1}, {"min_ttl": "60"}, {"min_ttl": 10**9}, {"min_ttl": True}):
        resp = await gateway.client.post("/v1/connections/google/token", headers=auth, json=bad)
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_min_ttl"
    resp = await gateway.client.post("/v1/connections/google/token", json={})
    assert resp.status == 401
