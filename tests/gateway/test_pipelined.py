"""The pipelining connection batches are sent on, against real redis-servers: replies matched to
their commands under concurrency, error replies as redis-py's own exceptions, restarts, a frozen
server, unix sockets, AUTH, TLS and big replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from foundation.pipelined import PipelinedConnection
from foundation.storage import connect, pipelined
from tests.support.gateway import REDIS_URL
from tests.support.ports import free_port
from tests.support.redis_servers import RedisServer
from tests.support.tlsca import mint
from tests.support.waiting import eventually


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis = connect(REDIS_URL)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own: restarted, frozen or configured by the test."""
    own = RedisServer(tmp_path / "redis")
    try:
        yield own
    finally:
        if own.proc is not None:
            own.thaw()
        own.stop(crash=True)


async def test_a_thousand_concurrent_calls_each_get_their_own_reply(client: Redis, prefix: str):
    connection = pipelined(client)
    # Some calls are one command, some three: replies are matched to commands, in order.
    calls = [
        [("ECHO", f"{i}")] if i % 3 else [("ECHO", f"{i}a"), ("INCR", f"{prefix}n"), ("ECHO", f"{i}b")]
        for i in range(1000)
    ]
    replies = await asyncio.gather(*(connection.execute(commands) for commands in calls))
    for i, reply in enumerate(replies):
        if i % 3:
            assert reply == [f"{i}".encode()]
        else:
            assert reply[0] == f"{i}a".encode() and reply[2] == f"{i}b".encode()
    counts = sorted(reply[1] for i, reply in enumerate(replies) if not i % 3)
    assert counts == list(range(1, len(counts) + 1))
    assert connection.writes == 1000  # one write per call


ERRORS: list[tuple[tuple[Any, ...], type[Exception]]] = [
    (("EVALSHA", "0" * 40, 0), NoScriptError),
    (("LPUSH", "{p}text", "x"), ResponseError),  # WRONGTYPE
    (("INCR", "{p}text"), ResponseError),  # ERR value is not an integer
    (("EVAL", "return redis.error_reply('LOADING Redis is loading the dataset in memory')", 0), BusyLoadingError),
    (("EVAL", "return redis.error_reply('READONLY You can\\'t write against a read only replica.')", 0), ReadOnlyError),
    (("NOSUCHCOMMAND",), ResponseError),
]


async def test_error_replies_are_the_exceptions_redis_py_raises_for_them(client: Redis, prefix: str):
    await client.set(f"{prefix}text", "not a number")
    commands = [tuple(str(a).replace("{p}", prefix) for a in command) for command, _ in ERRORS]
    ours = await pipelined(client).execute([*commands, ("ECHO", "after")])
    assert ours[-1] == b"after"  # each error answered its own command, the rest went on
    for command, (_, expected), reply in zip(commands, ERRORS, ours, strict=False):
        with pytest.raises(Exception) as raised:  # redis-py itself is the oracle
            await client.execute_command(*command)
        assert type(reply) is type(raised.value) is expected
        assert str(reply) == str(raised.value)


async def test_a_replica_answers_writes_with_read_only_error(server: RedisServer):
    server.extra = ("--replicaof", "127.0.0.1", str(free_port()))  # a primary nobody runs
    server.start()
    redis = connect(server.url)
    try:
        (reply,) = await pipelined(redis).execute([("SET", "k", "v")])
        assert isinstance(reply, ReadOnlyError)
    finally:
        await redis.aclose()


async def test_a_redis_restart_fails_what_was_in_flight_and_the_next_call_reconnects(server: RedisServer):
    server.start()
    redis = connect(server.url)
    try:
        connection = pipelined(redis)
        blocked = asyncio.create_task(connection.execute([("BLPOP", "list", 10)]))
        await eventually(lambda: connection.connected)
        server.restart(crash=True)
        with pytest.raises(RedisConnectionError):
            await blocked
        assert await connection.execute([("SET", "k", "v")]) == [b"OK"]
        # A clean restart while idle: the server's close is seen when it arrives, and the next
        # call goes out on a new connection, not into the dead one (no retry here to hide it).
        server.restart()
        await eventually(lambda: not connection.connected)
        assert await connection.execute([("GET", "k")]) == [b"v"]
    finally:
        await redis.aclose()


async def test_a_frozen_redis_times_out_within_the_socket_timeout_then_recovers(server: RedisServer):
    server.start()
    redis = connect(f"{server.url}?socket_timeout=0.5")
    try:
        connection = pipelined(redis)
        assert await connection.execute([("SET", "k", "v")]) == [b"OK"]
        server.freeze()
        began = time.monotonic()
        results = await asyncio.gather(
            connection.execute([("GET", "k")]), connection.execute([("ECHO", "x")]), return_exceptions=True
        )
        waited = time.monotonic() - began
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.5 <= waited < 2.0
        assert not connection.connected  # its replies, should they come, would be misaligned
        server.thaw()
        assert await connection.execute([("GET", "k")]) == [b"v"]
    finally:
        await redis.aclose()


async def test_a_wait_may_be_silent_for_its_own_timeout_beyond_the_socket_timeout(server: RedisServer):
    server.start()
    redis = connect(f"{server.url}?socket_timeout=0.2")
    try:
        connection = pipelined(redis)
        await connection.execute([("SET", "k", "v")])
        # No replica: WAIT answers 0 after its 600 ms, three times the socket timeout.
        assert await connection.execute([("WAIT", 1, 600)], patience=0.6) == [0]
        with pytest.raises(RedisTimeoutError):
            await connection.execute([("WAIT", 1, 600)])
    finally:
        await redis.aclose()


async def test_a_cancelled_call_leaves_the_replies_of_later_calls_in_place(client: Redis, prefix: str):
    await client.set(f"{prefix}k", "v")
    connection = pipelined(client)
    blocked = asyncio.create_task(connection.execute([("BLPOP", f"{prefix}none", 0.2)]))
    await eventually(lambda: connection.connected)
    blocked.cancel()
    assert await connection.execute([("GET", f"{prefix}k")]) == [b"v"]


async def test_arguments_go_out_as_redis_py_sends_them(client: Redis, prefix: str):
    connection = pipelined(client)
    values: list[bytes | str | int | float] = [b"\x00\xffbytes", "text é", 42, -7, 0.1, 1e20, 1 / 3]
    await connection.execute([("RPUSH", f"{prefix}l", *values)])
    await client.rpush(f"{prefix}r", *values)
    assert await client.lrange(f"{prefix}l", 0, -1) == await client.lrange(f"{prefix}r", 0, -1)
    with pytest.raises(DataError):
        await connection.execute([("SET", f"{prefix}b", True)])
    assert await connection.execute([("ECHO", "still fine")]) == [b"still fine"]


async def test_a_unix_socket_with_a_database_and_a_client_name(server: RedisServer):
    path = server.dir / "redis.sock"
    server.extra = ("--unixsocket", str(path), "--unixsocketperm", "700")
    server.start()
    redis = connect(f"unix://{path}?db=3&client_name=ally-test")
    try:
        connection = pipelined(redis)
        name, _, size = await connection.execute([("CLIENT", "GETNAME"), ("SET", "k", "v"), ("DBSIZE",)])
        assert (name, size) == (b"ally-test", 1)
        admin = connect(f"unix://{path}?db=3")
        try:
            assert await admin.get("k") == b"v"
        finally:
            await admin.aclose()
    finally:
        await redis.aclose()


async def test_auth_with_a_password_or_a_user_and_a_wrong_password_refused(server: RedisServer):
    server.extra = ("--requirepass", "s3cret", "--user", "alice", "on", ">alice-pw", "~*", "+@all")
    server.start()
    urls = {
        f"redis://:s3cret@127.0.0.1:{server.port}/2": b"default",
        f"redis://alice:alice-pw@127.0.0.1:{server.port}/2": b"alice",
    }
    for url, user in urls.items():
        redis = connect(url)
        try:
            whoami, _ = await pipelined(redis).execute([("ACL", "WHOAMI"), ("SET", "k", user)])
            assert whoami == user
        finally:
            await redis.aclose()
    for url, error in {
        f"redis://:wrong@127.0.0.1:{server.port}/0": AuthenticationError,
        f"redis://127.0.0.1:{server.port}/0": None,
    }.items():
        redis = connect(url)
        try:
            if error is None:  # no password: connected, every command refused
                (reply,) = await pipelined(redis).execute([("GET", "k")])
                assert isinstance(reply, AuthenticationError)
            else:
                with pytest.raises(error):
                    await pipelined(redis).execute([("GET", "k")])
        finally:
            await redis.aclose()


async def test_tls_with_the_clients_own_settings(server: RedisServer, tmp_path: Path):
    pki = mint(tmp_path / "pki")
    tls_port = free_port()
    server.extra = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(pki.cert_file),
        "--tls-key-file", str(pki.key_file),
        "--tls-ca-cert-file", str(pki.ca_file),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    server.start()
    trusted = connect(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki.ca_file}")
    untrusted = connect(f"rediss://127.0.0.1:{tls_port}/0")  # the system's CAs only
    try:
        assert await pipelined(trusted).execute([("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
        with pytest.raises(RedisConnectionError):
            await pipelined(untrusted).execute([("GET", "k")])
    finally:
        await trusted.aclose()
        await untrusted.aclose()


async def test_a_four_mib_reply_and_small_ones_around_it_all_arrive_whole(client: Redis, prefix: str):
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    await client.set(f"{prefix}big", big)
    connection = pipelined(client)
    calls = [connection.execute([("ECHO", f"{i}")]) for i in range(100)]
    calls.insert(50, connection.execute([("GET", f"{prefix}big"), ("ECHO", "after")]))
    replies = await asyncio.gather(*calls)
    assert replies[50] == [big, b"after"]
    assert [r for i, r in enumerate(replies) if i != 50] == [[f"{i}".encode()] for i in range(100)]


async def test_closing_the_client_closes_its_pipelining_connections_for_good():
    redis = connect(REDIS_URL)
    connection: PipelinedConnection = pipelined(redis)
    await connection.execute([("PING",)])
    assert connection.connected
    await redis.aclose()
    assert not connection.connected
    with pytest.raises(RedisConnectionError):
        await connection.execute([("PING",)])
    assert not connection.connected
