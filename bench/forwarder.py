"""The baseline: the thinnest aiohttp forwarder that does the same job without any guarantee.

It reads the webhook body, POSTs it to the server, and answers Telegram with what the
server said. No secret check, no routing, no sealing, no signing, no durable queue, no
ordering: whatever the gateway costs above this is the price of those guarantees.
Same event loop (uvloop), same HTTP library, same server process as the gateway.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.sink import run, serve

TARGET: web.AppKey[str] = web.AppKey("target", str)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(
        request.app[TARGET], data=body, headers={"content-type": "application/json"}
    ) as resp:
        await resp.read()
        return web.Response(status=200 if resp.status < 300 else 502)


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    yield
    await app[SESSION].close()


def build(target: str) -> web.Application:
    app = web.Application()
    app[TARGET] = target
    app.cleanup_ctx.append(_session)
    app.router.add_post("/telegram/webhook/{bot_id}", forward)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="the server's URL, e.g. http://127.0.0.1:9000/raw")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(build(args.target), args.port))
