"""Storage setup: one Redis client (single node or cluster) for the process."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from foundation.pipelined import Endpoint, PipelinedConnection

MAX_CONNECTIONS = 256
POOL_WAIT = 5.0

# Built once: without it redis-py builds one per new connection, and that looks its own version
# up in the installed packages' metadata each time (milliseconds of blocking file-system reads).
_DRIVER = DriverInfo()


# redis-py 8 turns on "maintenance notifications" (a Redis Enterprise feature) by default, and
# with them on, its pool no longer checks a pooled connection on checkout: a connection that
# died with a restarted Redis was handed to the next request. Off, a dead one is replaced.
_NO_MAINT = MaintNotificationsConfig(enabled=False)

_TORN = "the cluster client closed a connection under a running command"


class _ClusterPipeline(ClusterPipeline):  # type: ignore[misc]
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except AttributeError as exc:
            raise RedisConnectionError(_TORN) from exc


class _Cluster(RedisCluster):  # type: ignore[misc]
    """A RedisCluster that learns the slot map before it routes a command.

    redis-py 8.1.0 picks a command's node before it initializes a fresh client: with no slot
    map yet, a keyed command (SET, EVALSHA, ...) is routed as keyless to a random node, which
    answers MOVED. Every fifth MOVED makes the client close all of its connections, including
    those other commands are using at that moment; those then fail with `AttributeError:
    'NoneType' object has no attribute 'writelines'`, which is no RedisError, so it is neither
    retried nor answered 503. Initializing first (a no-op once the map is known) routes every
    command by its key, and a burst on a fresh client meets no MOVED at all.

    While slots really move (resharding, failover) the same reset can still happen; the
    AttributeError it causes is then raised as the connection error it is, here and in
    pipelines, so callers answer 503 (providers retry) instead of failing with a 500.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise RedisConnectionError(_TORN) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there, with its message
        return _ClusterPipeline(self, transaction)


class _Pool(BlockingConnectionPool):  # type: ignore[misc]
    """redis-py's blocking pool, owning as well the pipelining connections made for its client
    (`pipelined`): closing the client closes them too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._endpoint: Endpoint | None = None
        self._pipelined: list[PipelinedConnection] = []

    def pipelined(self) -> PipelinedConnection:
        if self._endpoint is None:
            self._endpoint = Endpoint.of(self)
        connection = PipelinedConnection(self._endpoint)
        self._pipelined.append(connection)
        return connection

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            for connection in self._pipelined:
                await connection.aclose()


def pipelined(redis: Redis) -> PipelinedConnection:
    """A new pipelining connection to the client's Redis, with the client's settings (address,
    TLS, credentials, database, timeouts, retry policy), closed when the client is closed."""
    pool = redis.connection_pool
    if not isinstance(pool, _Pool):
        raise TypeError("a pipelining connection needs a client made by foundation.storage.connect")
    return pool.pipelined()


def connect(url: str, *, cluster: bool = False) -> Redis:
    """A client that retries briefly on connection loss (Redis restarts are ridden through).

    `Retry` must be the asyncio one: the synchronous class accepted here "retries" the creation
    of a coroutine, never its failure, so no command was ever retried on a fresh connection.
    """
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    errors = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
    if cluster:
        # RedisCluster speaks the same command API; callers treat both alike.
        return cast(
            Redis,
            _Cluster.from_url(
                url, retry=retry, retry_on_error=errors, driver_info=_DRIVER, maint_notifications_config=_NO_MAINT
            ),
        )
    # A blocking pool: under a burst, a command waits (up to POOL_WAIT) for a free connection
    # instead of failing at once with MaxConnectionsError, which turned load into 503s and
    # delivery retries.
    pool = _Pool.from_url(
        url,
        retry=retry,
        retry_on_error=errors,
        health_check_interval=30,
        socket_connect_timeout=5,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT,
        driver_info=_DRIVER,
        maint_notifications_config=_NO_MAINT,
    )
    return Redis.from_pool(pool)
