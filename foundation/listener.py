"""The HTTP listener of `ally-gateway serve`: aiohttp's server, with a deadline on request heads.

aiohttp closes a connection that stays idle (`keepalive_timeout`), but it has no deadline for a
request head that has begun: a client sending a header byte every few seconds holds its
connection, a file descriptor and a task until the idle timeout, and a few thousand such
clients exhaust the process. Every connection's protocol is therefore wrapped in a
`HeadDeadline`, and `head_deadline_middleware` tells it when the app has a request in hand.

The same wrapper offers a connection's bytes first to `foundation.fastpath`, which answers the
plainest requests of the busiest route (the Telegram webhook) without aiohttp's request
machinery and gives everything else to aiohttp.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any, cast

from aiohttp import web

from foundation import fastpath
from foundation.http import Handler

IDLE_TIMEOUT = 75.0
"""Seconds a connection may stay open without sending a request (keep-alive)."""
HEADER_TIMEOUT = 15.0
"""Seconds a client gets to send a whole request head: from the connection opening, or from the
first byte of a later request's head. Clients send a head in one go; a slower one is cut off."""
BACKLOG = 1024
SHUTDOWN_TIMEOUT = 5.0
"""Seconds a clean stop waits for the requests in hand."""


def server_options() -> dict[str, Any]:
    """aiohttp's own server options for the gateway (request heads get their deadline from `Site`)."""
    return {"keepalive_timeout": IDLE_TIMEOUT}


def runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, **server_options()
    )


async def start(app: web.Application) -> web.AppRunner:
    """Set the app up (its start-up hooks run), then set aside everything made so far from the
    garbage collector's full passes.

    The libraries a gateway imports (the Telegram, Google, Microsoft and Anthropic SDKs) leave
    about 230,000 long-lived objects; every full collection walked them all, which stopped the
    event loop for about 150 ms each time (measured under the routing benchmark: 153 ms per
    full pass before, under 1 ms after). What start-up made lives as long as the process."""
    app_runner = runner(app)
    await app_runner.setup()
    gc.collect()
    gc.freeze()
    return app_runner


class HeadDeadline(asyncio.Protocol):
    """One connection: aiohttp's protocol, closed when a request head is not complete in time.

    The deadline runs from the connection opening and, between requests, from the first byte
    of the next head; the app taking the request ends it. A connection that sends nothing
    between requests is left to the idle timeout. Bodies have their own deadline
    (`foundation.http.BODY_TIMEOUT`).
    """

    __slots__ = ("_busy", "_fast", "_inner", "_lane", "_loop", "_timeout", "_timer", "_transport")

    def __init__(
        self, inner: web.RequestHandler, timeout: float, fast: tuple[list[fastpath.Route], set[Any]] | None = None
    ) -> None:
        """`fast`: the routes `foundation.fastpath` serves, and the set of requests it is serving."""
        self._inner = inner
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._busy = False
        self._fast = fast
        self._lane: fastpath.Lane | None = None
        # Made by the server in its loop. Kept: each `asyncio.get_running_loop()` costs a
        # `getpid` system call on CPython 3.11, and the deadline is armed once a request.
        self._loop = asyncio.get_running_loop()

    @classmethod
    def of(cls, request: web.BaseRequest) -> HeadDeadline | None:
        transport = request.transport
        protocol = transport.get_protocol() if transport is not None else None
        return protocol if isinstance(protocol, cls) else None

    def request_started(self) -> None:
        self._busy = True
        self._disarm()

    def request_finished(self) -> None:
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._arm()
        if self._fast is not None and self._fast[0]:
            # A stream transport (uvloop's is not registered as asyncio.Transport's subclass).
            routes, tasks = self._fast
            stream = cast(asyncio.Transport, transport)
            self._lane = fastpath.Lane(routes, stream, self._to_aiohttp, self._fast_request, tasks, IDLE_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._timer is None:
            self._arm()
        if self._lane is not None:
            self._lane.feed(data)
        else:
            self._inner.data_received(data)

    def _to_aiohttp(self, data: bytes) -> None:
        """From `data` on, the connection is aiohttp's (see `foundation.fastpath`)."""
        if self._lane is not None:
            self._lane.close()
            self._lane = None
        self._inner.data_received(data)

    def _fast_request(self, started: bool) -> None:
        if started:
            self.request_started()
            return
        self.request_finished()
        if self._lane is not None and self._lane.pending and self._timer is None:
            self._arm()  # what came meanwhile begins the next head: its deadline runs from now

    def eof_received(self) -> None:
        # aiohttp's protocol answers None, so the transport closes once the client half-closes.
        self._inner.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._lane is not None:
            self._lane.close()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._timeout, self._overdue)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _overdue(self) -> None:
        self._timer = None
        if not self._busy and self._transport is not None:
            self._transport.close()


@web.middleware
async def head_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's head is complete: its deadline ends; the next head's starts with its first byte."""
    deadline = HeadDeadline.of(request)
    if deadline is None:  # served by a plain aiohttp site (tests)
        return await handler(request)
    deadline.request_started()
    try:
        return await handler(request)
    finally:
        deadline.request_finished()


class Site(web.BaseSite):
    """A TCP site like aiohttp's `TCPSite`, whose connections are `HeadDeadline`s.

    With `reuse_port`, several processes each listen on the same port (`SO_REUSEPORT`) and the
    kernel spreads new connections over them (`ally-gateway serve --workers N`)."""

    __slots__ = ("_fast_requests", "_host", "_port", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._fast_requests: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        timeout = HEADER_TIMEOUT
        app = self._runner.app if isinstance(self._runner, web.AppRunner) else None
        fast = (app.get(fastpath.ROUTES, []), self._fast_requests) if app is not None else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HeadDeadline(server(), timeout, fast),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self) -> None:
        """Stop listening, then let the requests `foundation.fastpath` is serving finish (as
        aiohttp's shutdown lets its own finish), within the runner's shutdown time."""
        await super().stop()
        if self._fast_requests:
            await asyncio.wait(set(self._fast_requests), timeout=SHUTDOWN_TIMEOUT)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen on) `host:port` with `SO_REUSEPORT` and return the socket: the port
    (picked here when `port` is 0) stays this process's while the processes that listen on it
    with `Site(reuse_port=True)` come and go. A port another program holds fails here, once.
    Only listening sockets are given connections, so this one never holds a client waiting."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
