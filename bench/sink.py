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

Arrival times are `time.monotonic()`: CLOCK_MONOTONIC is one clock for every process of
the machine, so the load generator's send times compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import time
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

VERIFY_EVERY = 50


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

    async def deliver(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        user = request.match_info["user"]
        if self.modes.get(user) == "down":
            self.refused += 1
            return web.Response(status=503)
        body = await request.read()
        txn = request.match_info["txn"]
        n = body.count(b'"sealed":')
        self.txns.append((user, txn, n, now))
        self.count += n
        if user in self.keep:
            self.kept.setdefault(user, []).append(body)
        elif len(self.txns) % VERIFY_EVERY == 1:
            self._verify(user, txn, body, request)
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    def _verify(self, user: str, txn: str, body: bytes, request: web.Request) -> None:
        from routing.sealing import open_sealed
        from routing.signing import verify

        try:
            secret = self.secrets.get(user)
            if secret is not None:
                verify(secret, body, {k.lower(): v for k, v in request.headers.items()})
            event = orjson.loads(body)["events"][0]
            key = self.keys.get(user)
            if key is not None:
                payload = open_sealed(key, user, event["id"], event["sealed"])
                self.checked.append((user, txn, int(payload.get("update_id", -1))))
        except Exception as exc:
            self.failures.append(f"{user}/{txn}: {type(exc).__name__}: {exc}")

    async def raw_in(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = await request.read()
        self.raw.append((int(orjson.loads(body)["update_id"]), now))
        self.count += 1
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    # ------------------------------------------------------------------ control

    async def c_users(self, request: web.Request) -> web.Response:
        data: dict[str, Any] = orjson.loads(await request.read())
        for user, value in data.items():
            key_b64, secret = value
            raw = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
            self.keys[user] = X25519PrivateKey.from_private_bytes(raw)
            if secret:
                self.secrets[user] = secret
        return web.json_response({"users": len(self.keys)})

    async def c_mode(self, request: web.Request) -> web.Response:
        data: dict[str, str] = orjson.loads(await request.read())
        for user, mode in data.items():
            if mode == "ok":
                self.modes.pop(user, None)
            else:
                self.modes[user] = mode
        return web.json_response({"down": len(self.modes)})

    async def c_keep(self, request: web.Request) -> web.Response:
        self.keep = set(orjson.loads(await request.read()))
        return web.json_response({"keep": len(self.keep)})

    async def c_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def c_count(self, _request: web.Request) -> web.Response:
        return web.json_response({"events": self.count, "txns": len(self.txns), "refused": self.refused})

    async def c_dump(self, _request: web.Request) -> web.Response:
        data = {
            "txns": self.txns,
            "raw": self.raw,
            "checked": self.checked,
            "failures": self.failures[:20],
            "refused": self.refused,
            "kept": {u: [b.decode() for b in bodies] for u, bodies in self.kept.items()},
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")


def build() -> web.Application:
    sink = Sink()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_put("/u/{user}/ally/v1/transactions/{txn}", sink.deliver)
    app.router.add_post("/raw", sink.raw_in)
    app.router.add_post("/_users", sink.c_users)
    app.router.add_post("/_mode", sink.c_mode)
    app.router.add_post("/_keep", sink.c_keep)
    app.router.add_post("/_reset", sink.c_reset)
    app.router.add_get("/_count", sink.c_count)
    app.router.add_get("/_dump", sink.c_dump)
    return app


async def serve(app: web.Application, port: int) -> None:
    """Run `app` on 127.0.0.1:`port` (0: any), print `READY <port>`, stop on SIGTERM."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
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
    run(serve(build(), parser.parse_args().port))
