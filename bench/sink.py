"""The dedicated servers' side: one process hosting many users' endpoints, acknowledging fast.

- `PUT /u/{user}/ally/v1/transactions/{txn}`: a gateway delivery (contract §4). Records
  (user, txn_id, events in it, arrival time) and answers 200 at once. One transaction in
  `VERIFY_EVERY` is checked in full: its Standard Webhooks signature and the first event's
  seal are opened, and the update_id inside is recorded, so the harness can prove that its
  arrival-order matching pairs each event with the webhook that produced it.
- `POST /raw`: the baseline forwarder's delivery: the Telegram update as received.
- Control (`/_...`): keys and secrets for verification, per-user modes (`down` answers 503,
  as a server that is off), users whose bodies are kept for a later in-order check, reset,
  and the recorded arrivals.

The servers are other machines in production; here they share the cores of the systems
measured, so the sink is as cheap as it can be made: HTTP/1.1 keep-alive on a plain asyncio
protocol with llhttp's parser (`httptools`), no web framework (an aiohttp server cost about
three times the CPU per request).

Arrival times are `time.monotonic()`: CLOCK_MONOTONIC is one clock for every process of
the machine, so the load generator's send times compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import re
import signal
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

VERIFY_EVERY = 50


_OK = b'{"ok":true}'
_NOT_FOUND = b'{"error":"not_found"}'
_DELIVERY = re.compile(r"/u/([^/]+)/ally/v1/transactions/([^/]+)")
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 503: b"Service Unavailable"}


def _answer(status: int, body: bytes = b"", *, keep_alive: bool = True) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, _REASONS.get(status, b"-"), len(body), b"" if keep_alive else b"Connection: close\r\n", body,
    )  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.keys: dict[str, X25519PrivateKey] = {}
        self.secrets: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.keep: set[str] = set()
        self.reset()

    def reset(self) -> None:
        self.txns: list[tuple[str, str, int, float]] = []
        self.raw: list[tuple[int, float]] = []
        self.checked: list[tuple[str, str, int]] = []
        self.failures: list[str] = []
        self.refused = 0
        self.kept: dict[str, list[bytes]] = {}
        self.count = 0

    def handle(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes, now: float
    ) -> tuple[int, bytes]:
        """The answer (status and body) to one request."""
        if method == b"PUT":
            match = _DELIVERY.fullmatch(path)
            if match is None:
                return 404, _NOT_FOUND
            return self.deliver(match[1], match[2], headers, body, now)
        if method == b"POST" and path == "/raw":
            self.raw.append((int(orjson.loads(body)["update_id"]), now))
            self.count += 1
            return 200, _OK
        control = self._control.get((method, path))
        if control is None:
            return 404, _NOT_FOUND
        return 200, orjson.dumps(control(self, orjson.loads(body) if body else None))

    def deliver(
        self, user: str, txn: str, headers: list[tuple[bytes, bytes]], body: bytes, now: float
    ) -> tuple[int, bytes]:
        if self.modes.get(user) == "down":
            self.refused += 1
            return 503, b""
        n = body.count(b'"sealed":')
        self.txns.append((user, txn, n, now))
        self.count += n
        if user in self.keep:
            self.kept.setdefault(user, []).append(body)
        elif len(self.txns) % VERIFY_EVERY == 1:
            self._verify(user, txn, body, {k.decode().lower(): v.decode() for k, v in headers})
        return 200, _OK

    def _verify(self, user: str, txn: str, body: bytes, headers: dict[str, str]) -> None:
        from routing.sealing import open_sealed
        from routing.signing import verify

        try:
            secret = self.secrets.get(user)
            if secret is not None:
                verify(secret, body, headers)
            event = orjson.loads(body)["events"][0]
            key = self.keys.get(user)
            if key is not None:
                payload = open_sealed(key, user, event["id"], event["sealed"])
                self.checked.append((user, txn, int(payload.get("update_id", -1))))
        except Exception as exc:
            self.failures.append(f"{user}/{txn}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ control

    def c_users(self, data: dict[str, list[str]]) -> dict[str, int]:
        for user, (key_b64, secret) in data.items():
            raw = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
            self.keys[user] = X25519PrivateKey.from_private_bytes(raw)
            if secret:
                self.secrets[user] = secret
        return {"users": len(self.keys)}

    def c_mode(self, data: dict[str, str]) -> dict[str, int]:
        for user, mode in data.items():
            if mode == "ok":
                self.modes.pop(user, None)
            else:
                self.modes[user] = mode
        return {"down": len(self.modes)}

    def c_keep(self, data: list[str]) -> dict[str, int]:
        self.keep = set(data)
        return {"keep": len(self.keep)}

    def c_reset(self, _data: None) -> dict[str, bool]:
        self.reset()
        return {"ok": True}

    def c_count(self, _data: None) -> dict[str, int]:
        return {"events": self.count, "txns": len(self.txns), "refused": self.refused}

    def c_dump(self, _data: None) -> dict[str, Any]:
        return {
            "txns": self.txns,
            "raw": self.raw,
            "checked": self.checked,
            "failures": self.failures[:20],
            "refused": self.refused,
            "kept": {u: [b.decode() for b in bodies] for u, bodies in self.kept.items()},
        }

    _control: ClassVar[dict[tuple[bytes, str], Callable[[Sink, Any], Any]]] = {
        (b"POST", "/_users"): c_users,
        (b"POST", "/_mode"): c_mode,
        (b"POST", "/_keep"): c_keep,
        (b"POST", "/_reset"): c_reset,
        (b"GET", "/_count"): c_count,
        (b"GET", "/_dump"): c_dump,
    }


class _Connection(asyncio.Protocol):
    """One client's keep-alive connection: requests parsed by llhttp, answered in order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_answer(400, b'{"error":"bad_request"}', keep_alive=False))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        now = time.monotonic()
        assert self.transport is not None
        path = httptools.parse_url(self.url).path.decode()
        body = b"".join(self.body)
        try:
            status, answer = self.sink.handle(self.parser.get_method(), path, self.headers, body, now)
        except (ValueError, KeyError, TypeError) as exc:  # a malformed control or /raw body
            status, answer = 400, orjson.dumps({"error": type(exc).__name__})
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(_answer(status, answer, keep_alive=keep_alive))
        if not keep_alive:
            self.transport.close()


async def _until_stopped(port: int) -> None:
    """Print `READY <port>`, then return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port}", flush=True)
    await stop.wait()


async def serve_sink(port: int) -> None:
    """The sink on 127.0.0.1:`port` (0: any); prints `READY <port>`, stops on SIGTERM."""
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(sink), "127.0.0.1", port, backlog=2048, reuse_address=True)
    try:
        await _until_stopped(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def serve(app: web.Application, port: int) -> None:
    """Run `app` on 127.0.0.1:`port` (0: any), print `READY <port>`, stop on SIGTERM."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048, reuse_address=True)
    await site.start()
    try:
        await _until_stopped(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def run(coro: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(coro)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    run(serve_sink(parser.parse_args().port))
