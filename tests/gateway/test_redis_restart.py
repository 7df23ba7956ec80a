"""Redis restarted under a running gateway: once `/readyz` says 200 again, the next requests
succeed. The connections pooled before the restart are dead; none may be handed to a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from tests.support import ingress
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, make_settings, register_user
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROUNDS = 12
BURST = 24


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def ready(client: TestClient[Any, Any]) -> None:
    for _ in range(200):
        if (await client.get("/readyz")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("/readyz did not come back")


async def burst(client: TestClient[Any, Any], server_token: str, round_: int) -> list[int]:
    """As many requests at once as the pool has connections in use, each getting its own, and
    as many events handed over, which share the batcher's pipelining connection."""
    server = {"Authorization": f"Bearer {server_token}"}
    calls = [client.post("/v1/ping", headers=server) for _ in range(BURST // 3)]
    calls += [client.get("/admin/v1/users/u1", headers=ADMIN) for _ in range(BURST // 3)]
    calls += [client.post("/test/ingress/u1", json={"seq": round_ * BURST + i}) for i in range(BURST // 3)]
    return [resp.status for resp in await asyncio.gather(*calls)]


async def test_the_first_requests_after_a_redis_restart_succeed(
    tmp_path: Path, redis: RedisServer, dedicated: DedicatedServer
):
    settings = make_settings(tmp_path, redis_url=redis.url)
    client = TestClient(TestServer(create_app(settings, extra=[ingress.PLUGIN]), port=0))
    await client.start_server()
    try:
        token = (await register_user(client, dedicated, "u1"))["server_token"]
        failures = []
        for round_ in range(ROUNDS):
            assert set(await burst(client, token, 2 * round_)) == {200}  # many live connections
            # Alternately a clean stop and a crash: the pooled sockets die either way.
            redis.restart(crash=round_ % 2 == 1)
            await ready(client)
            statuses = await burst(client, token, 2 * round_ + 1)
            if set(statuses) != {200}:
                failures.append((round_, sorted(statuses)))
        assert failures == []
    finally:
        await client.close()
