"""One pipelining Redis connection: commands written as they come, replies matched to them in order.

`foundation.batching` sends its batches here instead of through redis-py's pipeline objects:
a batch is packed (hiredis' packer, the one redis-py uses) and written with one
`transport.write`; the replies are parsed by a `hiredis.Reader` as they arrive and handed to
the batches in the order they were written (a callback, or the future `send` awaits), so
batches need not wait for each other. It speaks RESP2 (no HELLO): replies are what Redis sends, raw — bytes,
ints, lists, None — and an error reply is the exception redis-py's own parser makes of it
(`NOSCRIPT` → NoScriptError, `READONLY` → ReadOnlyError, `LOADING` → BusyLoadingError, other
codes → ResponseError), returned in its command's place: each command gets its own answer.

Everything about where and how to connect is read from the redis-py client's pool (one
source of truth): TCP, a unix socket (`unix://`) or TLS (`rediss://`, the client's own TLS
settings), then what the URL asks for on connect (AUTH, CLIENT SETNAME, SELECT), the
keep-alive options, and its socket timeouts (redis-py's default: 5 s).

Failures, each one leaving no connection behind to misalign later replies:
- the connection is lost (Redis restarted, the network cut): every batch in flight fails with
  redis `ConnectionError`; a close by the server is seen when it arrives (`connection_lost`),
  so the next batch is written on a new connection, not into the dead one;
- no byte of an owed reply for `socket_timeout` seconds (a stalled or frozen Redis): every
  batch in flight fails with redis `TimeoutError` and the connection is closed.
Nothing is retried here; `foundation.batching` decides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.credentials import CredentialProvider, UsernamePasswordCredentialProvider
from redis.exceptions import AuthenticationWrongNumberOfArgsError, DataError, InvalidResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Arg = bytes | str | int | float
Command = Sequence[Arg]

_MORE = object()
"""What the reader answers while a reply is still incomplete."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, exactly as the redis-py client's connections do."""

    address: str
    """`host:port`, or the socket's path: for error messages."""
    host: str
    port: int
    path: str | None
    ssl: Any
    keepalive: dict[int, int] | None
    credentials: CredentialProvider | None
    client_name: str | None
    db: int
    timeout: float | None
    connect_timeout: float | None
    retry: Retry
    """The client's retry policy (its `Retry`, with the errors it retries on)."""

    @classmethod
    def of(cls, pool: ConnectionPool) -> Endpoint:
        # redis-py's own reading of the pool's settings: a connection object, never connected.
        conn: Any = pool.connection_class(**pool.connection_kwargs)
        unix = isinstance(conn, UnixDomainSocketConnection)
        credentials = conn.credential_provider
        if credentials is None and (conn.username or conn.password):
            credentials = UsernamePasswordCredentialProvider(conn.username, conn.password)
        keepalive = None
        if not unix and conn.socket_keepalive:
            keepalive = dict(conn.socket_keepalive_options or {})
        return cls(
            address=conn.path if unix else f"{conn.host}:{conn.port}",
            host="" if unix else conn.host,
            port=0 if unix else int(conn.port),
            path=conn.path if unix else None,
            ssl=conn.ssl_context.get() if isinstance(conn, SSLConnection) else None,
            keepalive=keepalive,
            credentials=credentials,
            client_name=conn.client_name,
            db=int(conn.db or 0),
            timeout=conn.socket_timeout,
            connect_timeout=conn.socket_connect_timeout,
            retry=conn.retry,
        )


def pack(command: Command) -> bytes:
    """A command in RESP: bytes as they are, str as UTF-8, int in decimal, float as its repr."""
    try:
        packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # (its stub: a 1-tuple)
    except TypeError as exc:  # a bool or None: what redis-py refuses too, with this error
        raise DataError(str(exc)) from exc
    return packed


Done = Callable[[list[Any] | Exception], None]
"""Takes a batch's replies, or the error that failed the whole batch."""


class _Batch:
    __slots__ = ("done", "patience", "replies", "size")

    def __init__(self, done: Done, size: int, patience: float) -> None:
        self.done = done
        self.size = size
        self.patience = patience
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    """The wire of one connection: writes batches, matches replies to them in order."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._loop = asyncio.get_running_loop()
        self._endpoint = endpoint
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_MORE
        )
        self._waiting: deque[_Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0.0
        """When a byte last arrived, or the first batch was written after none was owed."""
        self.open = False
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio's classes
        self.open = True

    def send(self, data: bytes, size: int, patience: float, done: Done) -> None:
        """Write `size` commands (packed in `data`); `done` gets their replies, in order, when the
        last one is in. `patience`: how much longer than the socket timeout Redis may be silent
        for them (a WAIT's own timeout)."""
        if not self.open:
            _hand(done, RedisConnectionError(f"Connection to {self._endpoint.address} is closed."))
            return
        if not self._waiting:
            self._progress = self._loop.time()
        self._waiting.append(_Batch(done, size, patience))
        self._transport.write(data)  # type: ignore[union-attr]
        if self._timer is None and self._endpoint.timeout:
            self._timer = self._loop.call_at(self._progress + self._endpoint.timeout, self._check)

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not _MORE:
                if not waiting:
                    raise InvalidResponse("a reply no command asked for")
                batch = waiting[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.size:
                    waiting.popleft()
                    _hand(batch.done, batch.replies)
        except InvalidResponse as exc:
            self._fail(RedisConnectionError(f"Protocol error from {self._endpoint.address}: {exc}"))

    def eof_received(self) -> bool:
        return False  # close: nothing more will come

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else "."
        self._fail(RedisConnectionError(f"Connection closed by server {self._endpoint.address}{reason}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self, error: Exception) -> None:
        self._fail(error)

    def socket(self) -> Any:
        return self._transport.get_extra_info("socket") if self._transport is not None else None

    def _check(self) -> None:
        self._timer = None
        if not self._waiting or not self.open:
            return
        timeout = (self._endpoint.timeout or 0.0) + max(batch.patience for batch in self._waiting)
        due = self._progress + timeout
        if self._loop.time() >= due:
            self._fail(RedisTimeoutError(f"Timeout reading from {self._endpoint.address}"))
        else:
            self._timer = self._loop.call_at(due, self._check)

    def _fail(self, error: Exception) -> None:
        """Fail every batch in flight and close: later replies could only be misaligned."""
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for batch in waiting:
            _hand(batch.done, error)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


class PipelinedConnection:
    """A connection made on first use and made again after a loss, until `aclose`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False
        self.writes = 0
        """Batches written so far (on every connection this has made): one `transport.write` each."""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        """Holding a connection not known to be lost (a close by the server is known when it arrives)."""
        return self._protocol is not None and self._protocol.open

    async def execute(self, commands: Sequence[Command], *, patience: float = 0.0) -> list[Any]:
        """Send `commands` in one write and return their replies, an error reply as its exception.

        Raises `DataError` for an argument that is none of bytes, str, int and float (before
        sending anything), redis `ConnectionError` or `TimeoutError` when the connection fails
        before every reply is in (some of the commands may have run). `patience`: how much longer
        than the socket timeout Redis may be silent for them (a WAIT's own timeout)."""
        return await self.send(b"".join([pack(command) for command in commands]), len(commands), patience=patience)

    async def send(self, data: bytes, count: int, *, patience: float = 0.0) -> list[Any]:
        """`execute` for `count` commands packed already (`pack`), in order, in `data`."""
        protocol = self._protocol
        if protocol is None or not protocol.open:
            protocol = await self._connected()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.send(data, count, patience, functools.partial(_settle, future))
        self.writes += 1
        return await future

    def send_nowait(self, data: bytes, count: int, patience: float, done: Done) -> bool:
        """`send` without a coroutine, when connected (else False, and nothing sent): `done` is
        called with the replies, or the error that failed the batch, from the event loop."""
        protocol = self._protocol
        if protocol is None or not protocol.open:
            return False
        protocol.send(data, count, patience, done)
        self.writes += 1
        return True

    async def aclose(self) -> None:
        """Close for good: a later call fails with redis `ConnectionError`, as Redis being gone."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close(RedisConnectionError(f"Connection to {self.endpoint.address} closed by the client."))
            await protocol.closed

    async def _connected(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect at a time; the others use what it made
            if self._closed:
                raise RedisConnectionError(f"Connection to {self.endpoint.address} was closed by the client.")
            protocol = self._protocol
            if protocol is None or not protocol.open:
                self._protocol = None
                protocol = self._protocol = await self._connect()
            return protocol

    async def _connect(self) -> _Protocol:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                if endpoint.path is not None:
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(endpoint), endpoint.path)
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(endpoint), endpoint.host, endpoint.port, ssl=endpoint.ssl
                    )
        except TimeoutError as exc:
            raise RedisTimeoutError(f"Timeout connecting to {endpoint.address}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error {exc.errno} connecting to {endpoint.address}. {exc.strerror}.") from exc
        try:
            _keep_alive(protocol, endpoint)
            await self._handshake(protocol)
        except BaseException:
            protocol.close(RedisConnectionError(f"Connection to {endpoint.address} failed its handshake."))
            raise
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """What redis-py does on connect, for the settings this project can give it."""
        endpoint = self.endpoint
        if endpoint.credentials is not None:
            auth = await endpoint.credentials.get_credentials_async()
            (reply,) = await _replies(protocol, [("AUTH", *auth)])
            if isinstance(reply, AuthenticationWrongNumberOfArgsError):  # Redis < 6: a password only
                (reply,) = await _replies(protocol, [("AUTH", auth[-1])])
            if isinstance(reply, Exception):
                raise reply
        setup: list[Command] = []
        if endpoint.client_name:
            setup.append(("CLIENT", "SETNAME", endpoint.client_name))
        if endpoint.db:
            setup.append(("SELECT", endpoint.db))
        if setup:
            for reply in await _replies(protocol, setup):
                if isinstance(reply, Exception):
                    raise RedisConnectionError(f"Redis refused the connection's set-up: {reply}") from reply


async def _replies(protocol: _Protocol, commands: list[Command]) -> list[Any]:
    future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    protocol.send(b"".join(map(pack, commands)), len(commands), 0.0, functools.partial(_settle, future))
    return await future


def _settle(future: asyncio.Future[list[Any]], result: list[Any] | Exception) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _hand(done: Done, result: list[Any] | Exception) -> None:
    """Hand a batch its replies; a receiver that fails must not stop the replies of the others."""
    try:
        done(result)
    except Exception:
        log.exception("a batch's replies could not be handed over")


def _keep_alive(protocol: _Protocol, endpoint: Endpoint) -> None:
    sock = protocol.socket()
    if endpoint.keepalive is None or sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in endpoint.keepalive.items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
