"""The delivery's HTTP client: one `PUT` at a time per connection, HTTP/1.1 kept alive, a pool of
idle connections per origin.

Deliveries are the one request the gateway makes per event; aiohttp's client spent about
170 µs of CPU on each beyond what the exchange itself needs (`python -m bench.http_client`).
This client does only what a delivery needs, with the same guards:

- **Parsing** is h11's (a strict HTTP/1.1 state machine): status line, headers, framing by
  Content-Length, chunked or the connection's end, interim 1xx answers skipped. An answer's
  head is held only while under `MAX_HEAD` bytes (or one read), and at most `limit` bytes of
  its body are read; a
  connection whose answer was not read to its end, that says `Connection: close`, or on which
  the server sent anything more, is closed, never reused.
- **Where it connects**: with `production`, the names are resolved by `PublicOnlyResolver` and
  every socket is made by `public_socket` with the very address it connects to — the checks
  the production aiohttp connector makes (`routing/urls.py`). TLS with the gateway's client
  context, the URL's host as the name checked.
- **Redirects** are answers like any other (the caller does not follow them), no cookies, no
  compression asked for, no proxy from the environment.
- **A kept-alive connection the server had closed** fails the request before any answer byte:
  the request is then sent once more on a new connection (a delivery is idempotent: same
  transaction id, same body).
- **Time**: the caller bounds the whole request (`asyncio.timeout`); a request that is cut
  short closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from routing.urls import PublicOnlyResolver, public_socket

MAX_HEAD = 64 * 1024
"""The most of an incomplete answer head (status line and headers) held."""
IDLE_TIMEOUT = 15.0
"""Seconds an idle connection is kept for its next request."""
IDLE_PER_ORIGIN = 32
IDLE_TOTAL = 1000
READ_SIZE = 64 * 1024


class AnswerError(OSError):
    """The server's answer could not be read (malformed, or the connection ended inside it)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    """The `Retry-After` header as sent, if any."""


@dataclass(frozen=True, slots=True)
class _Origin:
    tls: bool
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.reader._buffer  # type: ignore[attr-defined]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Stale(Exception):
    """A reused connection ended before any byte of the answer: the server had closed it."""


class Client:
    """PUTs bodies to servers' URLs; `close()` ends every idle connection."""

    def __init__(self, *, production: bool, tls: ssl.SSLContext, resolver: AbstractResolver | None = None) -> None:
        self._production = production
        self._tls = tls
        self._resolver = resolver or (PublicOnlyResolver() if production else ThreadedResolver())
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._last_sweep = 0.0
        self._closed = False

    async def put(self, url: str, headers: Sequence[tuple[str, str]], body: bytes, *, limit: int) -> Answer:
        """Send `body` to `url`; read at most `limit` bytes of the answer's body."""
        if self._closed:
            raise OSError("the delivery client is closed")
        origin, target = _split(url)
        if time.monotonic() - self._last_sweep >= IDLE_TIMEOUT / 3:
            self._sweep()
        request = h11.Request(
            method="PUT",
            target=target,
            headers=[("Host", origin.host_header), *headers, ("Content-Length", str(len(body)))],
        )
        for _ in range(2):
            connection = self._take(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin)
            try:
                answer, reusable = await _exchange(connection, request, body, limit, reused=reused)
            except _Stale:
                connection.close()
                continue
            except BaseException:
                connection.close()
                raise
            if reusable:
                self._give_back(origin, connection)
            else:
                connection.close()
            return answer
        raise AnswerError("the server closed the connection before answering")

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
        with contextlib.suppress(Exception):
            await self._resolver.close()

    def _sweep(self) -> None:
        """Close the idle connections past `IDLE_TIMEOUT` (the servers of users who went quiet)."""
        now = self._last_sweep = time.monotonic()
        for origin in list(self._idle):
            connections = self._idle[origin]
            kept = [c for c in connections if now - c.idle_since < IDLE_TIMEOUT and c.usable()]
            for connection in connections:
                if connection not in kept:
                    connection.close()
            self._idle_count -= len(connections) - len(kept)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    def _take(self, origin: _Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        now = time.monotonic()
        while connections:
            connection = connections.pop()
            self._idle_count -= 1
            if now - connection.idle_since < IDLE_TIMEOUT and connection.usable():
                return connection
            connection.close()
        return None

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        connections = self._idle.setdefault(origin, [])
        if self._closed or len(connections) >= IDLE_PER_ORIGIN or self._idle_count >= IDLE_TOTAL:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connections.append(connection)
        self._idle_count += 1

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._addresses(origin)
        last: Exception | None = None
        for family, proto, address in addresses:
            try:
                if self._production:
                    sock = public_socket((family, socket.SOCK_STREAM, proto, "", address))
                else:
                    sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as exc:
                last = exc
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=self._tls if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                    limit=READ_SIZE,
                )
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError | ssl.SSLError):
                    raise
                last = exc
                continue
            return _Connection(reader, writer)
        raise last if last is not None else OSError(f"no address to connect to for {origin.host}")

    async def _addresses(self, origin: _Origin) -> list[tuple[int, int, tuple[Any, ...]]]:
        """Where to connect, in order: an IP literal as it is (the socket's check still applies),
        a name through the resolver (in production, public addresses only)."""
        try:
            literal = socket.inet_pton(socket.AF_INET6 if ":" in origin.host else socket.AF_INET, origin.host)
        except OSError:
            literal = None
        if literal is not None:
            if ":" in origin.host:
                return [(socket.AF_INET6, socket.IPPROTO_TCP, (origin.host, origin.port, 0, 0))]
            return [(socket.AF_INET, socket.IPPROTO_TCP, (origin.host, origin.port))]
        found = await self._resolver.resolve(origin.host, origin.port, family=socket.AF_UNSPEC)
        addresses: list[tuple[int, int, tuple[Any, ...]]] = []
        for result in found:
            family = int(result["family"])
            if family == socket.AF_INET6:
                address: tuple[Any, ...] = (result["host"], int(result["port"]), 0, 0)
            else:
                address = (result["host"], int(result["port"]))
            addresses.append((family, socket.IPPROTO_TCP, address))
        return addresses


def _split(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OSError("not an http(s) URL")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Origin(tls, parts.hostname, port), target


async def _exchange(
    connection: _Connection, request: h11.Request, body: bytes, limit: int, *, reused: bool
) -> tuple[Answer, bool]:
    """One request and its answer; whether the connection may carry the next request."""
    machine = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    writer, reader = connection.writer, connection.reader
    head = machine.send(request)
    # Head and body in one write (no copy of the body); Content-Length frames it as it is.
    chunks = machine.send_with_data_passthrough(h11.Data(data=body)) or []
    writer.writelines([head or b"", *chunks])
    machine.send(h11.EndOfMessage())
    received_any = False
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        if reused:
            raise _Stale from None
        raise
    status = 0
    retry_after: str | None = None
    taken = 0
    while True:
        try:
            event = machine.next_event()
        except h11.RemoteProtocolError as exc:
            raise AnswerError(f"malformed answer: {exc}") from None
        if event is h11.NEED_DATA:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                if reused and not received_any:
                    raise _Stale from None
                raise
            if not data and reused and not received_any:
                raise _Stale
            received_any = received_any or bool(data)
            machine.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            for name, value in event.headers:
                if name == b"retry-after":
                    retry_after = value.decode("latin-1")
            continue
        if isinstance(event, h11.Data):
            taken += len(event.data)
            if taken > limit:
                # The rest is not read: the connection goes with it.
                return Answer(status, retry_after), False
            continue
        if isinstance(event, h11.EndOfMessage):
            break
        if isinstance(event, h11.ConnectionClosed):
            raise AnswerError("the connection ended inside the answer")
        raise AnswerError(f"unexpected answer event {type(event).__name__}")
    reusable = machine.our_state is h11.DONE and machine.their_state is h11.DONE and not machine.trailing_data[0]
    return Answer(status, retry_after), reusable and connection.usable()
