"""The embedded default as a user runs it: `python -m gateway serve` with no ALLY_REDIS_URL.
Data survives restarts, a clean stop stops the Redis child, and so does kill -9 of the
gateway (no stray redis-server), after which a restart works and the data is there."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tests.support.gateway import make_settings, random_public_key
from tests.support.subprocess_gateway import GatewayProcess, environment

pytestmark = pytest.mark.slow


def redis_pid(data_dir: Path) -> int:
    return int((data_dir / "redis" / "redis.pid").read_text().strip())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the killed gateway, is gone anyway).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def gone(pid: int, limit: float = 15.0) -> bool:
    for _ in range(int(limit / 0.1)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return False


async def status_of(gateway: GatewayProcess, headers: dict[str, str]) -> int:
    url = f"{gateway.url}/admin/v1/users/kept"
    async with aiohttp.ClientSession(headers=headers) as session, session.get(url) as r:
        return r.status


async def test_embedded_redis_persists_and_never_outlives_the_gateway(tmp_path: Path):
    settings = make_settings(tmp_path, redis_url=None)
    env = environment(settings)
    env.pop("ALLY_REDIS_URL", None)
    gateway = GatewayProcess(env, tmp_path / "gateway.log")
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    try:
        await gateway.start()
        async with aiohttp.ClientSession(headers=headers) as session:
            body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
            async with session.put(f"{gateway.url}/admin/v1/users/kept", json=body) as resp:
                assert resp.status == 201
        first = redis_pid(settings.data_dir)
        assert alive(first)

        gateway.stop()  # clean stop: the child Redis is stopped with it
        assert await gone(first)

        await gateway.start()
        second = redis_pid(settings.data_dir)
        assert await status_of(gateway, headers) == 200, "the user survived a restart"

        gateway.kill()  # kill -9: the parent-death signal still stops Redis cleanly
        assert await gone(second), "no stray redis-server after kill -9"

        await gateway.start()
        assert await status_of(gateway, headers) == 200, "and after kill -9 and a restart"
    finally:
        gateway.stop()
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
