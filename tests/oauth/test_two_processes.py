"""Single-flight refresh across two real gateway processes sharing one Redis."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from foundation.config import Settings
from foundation.redis_keys import Keys
from foundation.storage import connect as connect_redis
from foundation.vault import Vault
from oauth.store import ConnectionStore
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import register_user, wipe
from tests.support.oauth_world import RETURN_ORIGIN, Browser, World
from tests.support.ports import free_port

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def environment(settings: Settings, port: int) -> dict[str, str]:
    ring = ",".join(f"{k.kid}:{base64.urlsafe_b64encode(k.key).rstrip(b'=').decode()}" for k in settings.master_keys)
    assert settings.redis_url and settings.admin_token
    return {
        **os.environ,
        "PORT": str(port),
        "ALLY_REDIS_URL": settings.redis_url,
        "ALLY_KEY_PREFIX": settings.key_prefix,
        "ALLY_ADMIN_TOKEN": settings.admin_token,
        "ALLY_MASTER_KEYS": ring,
        "ALLY_PUBLIC_URL": settings.public_url,
        "ALLY_ALLOWED_RETURN_ORIGINS": RETURN_ORIGIN,
        "ALLY_GOOGLE_CLIENT_ID": settings.google_client_id or "",
        "ALLY_GOOGLE_CLIENT_SECRET": settings.google_client_secret or "",
        "ALLY_GOOGLE_AUTH_URI": settings.google_auth_uri,
        "ALLY_GOOGLE_TOKEN_URI": settings.google_token_uri,
        "ALLY_GOOGLE_REVOKE_URI": settings.google_revoke_uri,
        "ALLY_GMAIL_API_URL": settings.gmail_api_url,
        "ALLY_MICROSOFT_CLIENT_ID": settings.microsoft_client_id or "",
        "ALLY_MICROSOFT_CLIENT_SECRET": settings.microsoft_client_secret or "",
        "ALLY_MICROSOFT_OIDC_AUTHORITY": settings.microsoft_oidc_authority or "",
        "ALLY_GRAPH_API_URL": settings.graph_api_url,
    }


async def serve(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return process
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("gateway process did not become ready")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two(world: World, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Settings, list[int]]]:
    settings = world.settings(tmp_path_factory.mktemp("two"))
    ports = [world.port, free_port()]
    processes = [await serve(environment(settings, port), port) for port in ports]
    try:
        yield settings, ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await process.wait()
        await wipe(settings.key_prefix)


@pytest.mark.parametrize("provider", ["google", "microsoft"])
async def test_two_gateway_processes_refresh_an_expired_token_once(
    two: tuple[Settings, list[int]], world: World, browser: Browser, dedicated: DedicatedServer, provider: str
):
    settings, ports = two
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    base = [f"http://127.0.0.1:{p}" for p in ports]
    async with aiohttp.ClientSession() as http:
        user = f"multi-{provider}"
        created = await register_user(http, dedicated, user, base=base[0], admin_token=settings.admin_token)
        connect = {"provider": provider, "return_url": f"{RETURN_ORIGIN}/done"}
        async with http.post(f"{base[0]}/admin/v1/users/{user}/connect", json=connect, headers=admin) as resp:
            url = (await resp.json())["url"]
        assert "status=connected" in await browser.open(url)
        # The stored access token expires (as if an hour had passed).
        redis = connect_redis(settings.redis_url or "")
        try:
            store = ConnectionStore(
                redis, Keys(settings.key_prefix), Vault(redis, Keys(settings.key_prefix), settings.master_keys)
            )
            found = await store.load(user, provider)
            assert found is not None
            assert await store.update_tokens(found[0], dataclasses.replace(found[1], expires_at=time.time() - 1))
        finally:
            await redis.aclose()
        await world.auth.control("reset")

        auth = {"Authorization": f"Bearer {created['server_token']}"}

        async def lease(root: str) -> tuple[int, str]:
            path = f"{root}/v1/connections/{provider}/token"
            async with http.post(path, json={"min_ttl": 300}, headers=auth) as resp:
                return resp.status, (await resp.json()).get("access_token", "")

        answers = await asyncio.gather(*(lease(base[n % 2]) for n in range(100)))
    assert {status for status, _ in answers} == {200}
    assert len({token for _, token in answers}) == 1
    counts = await world.auth.counts()
    assert counts.get("token:refresh_token") == 1
    assert not any(name.startswith("token_error") for name in counts)
