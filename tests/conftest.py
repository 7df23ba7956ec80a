from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from foundation.config import Settings
from foundation.redis_keys import Keys
from foundation.storage import connect
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import REDIS_URL, Gateway, make_settings, serve, wipe
from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.running import running

# The stand-ins' fixtures: one of each, for every test directory.
pytest_plugins = ["tests.support.standins"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the shared Redis, made as the gateway makes its own, for tests of one part without a gateway."""
    client = connect(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the shared Redis, wiped afterwards."""
    value = f"t{uuid.uuid4().hex[:12]}:"
    try:
        yield value
    finally:
        await wipe(value)


@pytest.fixture
def keys(prefix: str) -> Keys:
    """A key layout under a prefix of the test's own, wiped afterwards."""
    return Keys(prefix)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with serve(settings) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-node Redis Cluster on loopback, shared by the session (keys are prefixed per test)."""
    cluster = RedisCluster.start(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def dedicated() -> AsyncIterator[DedicatedServer]:
    async with running(DedicatedServer()) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own with AOF on, for tests that restart, kill or read it on disk."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that count what reaches Redis."""
    server = RedisServer(tmp_path / "own-redis", appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
