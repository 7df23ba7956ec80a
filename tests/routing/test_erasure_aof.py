"""After an erasure finishes, Redis's append-only file no longer holds the user: the gateway
asks for `BGREWRITEAOF`, at most once per ALLY_AOF_REWRITE_INTERVAL. The AOF here is plain
commands (no RDB preamble), read straight from disk."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.commands.doctor.durability import check_compaction
from gateway.commands.doctor.report import Report
from routing.services import SERVICES, Services
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, make_settings, register_user
from tests.support.redis_servers import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def client(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(tmp_path, redis_url=redis_server.url, delivery_lease=2.0, delivery_timeout=1.0)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def services(client: TestClient[Any, Any]) -> Services:
    assert client.app is not None
    found: Services = client.app[SERVICES]
    return found


async def traces(client: TestClient[Any, Any], dedicated: DedicatedServer, user_id: str) -> list[bytes]:
    """Register the user with a linked chat; what of them would identify them on disk."""
    await register_user(client, dedicated, user_id)
    s = services(client)
    chat_id = str(int.from_bytes(os.urandom(5), "big"))
    await s.redis.hset(s.keys.user_key(user_id, "tg:chats"), chat_id, b"private")
    wrapped = await s.redis.hget(s.keys.user(user_id), "dek")
    assert wrapped is not None
    return [user_id.encode(), chat_id.encode(), bytes(wrapped)]


async def erase(client: TestClient[Any, Any], user_id: str) -> None:
    assert (await client.delete(f"/admin/v1/users/{user_id}", headers=ADMIN)).status == 202

    async def gone() -> bool:
        return (await client.get(f"/admin/v1/users/{user_id}", headers=ADMIN)).status == 404

    await eventually(gone, timeout=30)
    # The user is gone as soon as its record is; the erasure goes on a little (the lease, then
    # the AOF compaction it asks for).
    await services(client).eraser.wait(user_id)


async def test_a_finished_erasure_leaves_nothing_of_the_user_in_the_aof(
    client: TestClient[Any, Any], redis_server: RedisServer, dedicated: DedicatedServer
):
    user_id = f"erase-me-{os.urandom(4).hex()}"
    found = await traces(client, dedicated, user_id)
    assert all(trace in redis_server.persisted() for trace in found)  # the control: the AOF holds them now
    await erase(client, user_id)
    await eventually(lambda: not any(trace in redis_server.persisted() for trace in found), timeout=20)
    status = await services(client).redis.hgetall(services(client).keys.global_key("aof"))
    assert status[b"last_outcome"] == b"rewriting" and int(status[b"pending"]) == 0

    # A second erasure within the interval (10 min) waits for the next rewrite: still on disk.
    second = f"erase-me-{os.urandom(4).hex()}"
    found = await traces(client, dedicated, second)
    await erase(client, second)
    assert second.encode() in redis_server.persisted()
    status = await services(client).redis.hgetall(services(client).keys.global_key("aof"))
    assert int(status[b"pending"]) == 1


async def test_a_redis_that_refuses_the_rewrite_still_erases_and_the_doctor_says_so(
    tmp_path: Path, dedicated: DedicatedServer
):
    # Managed Redis services disable the command; renaming it away does the same here.
    redis = RedisServer(tmp_path / "managed", extra=("--rename-command", "BGREWRITEAOF", ""))
    redis.start()
    settings = make_settings(tmp_path, redis_url=redis.url, delivery_lease=2.0, delivery_timeout=1.0)
    client = TestClient(TestServer(create_app(settings), port=0))
    await client.start_server()
    try:
        user_id = f"erase-me-{os.urandom(4).hex()}"
        await traces(client, dedicated, user_id)
        await erase(client, user_id)
        status = await services(client).redis.hgetall(services(client).keys.global_key("aof"))
        assert status[b"last_outcome"] == b"refused"
        report = Report()
        await check_compaction(services(client).redis, settings, report)
        assert report.warnings == 1
    finally:
        await client.close()
        redis.stop()
