"""One gateway process, configured from `ALLY_*` like `ally-gateway serve`, run the same way
(uvloop, `create_app`, the same runner and listening site), printing `READY <port>` once it listens.

It adds one route that exists only here: `POST /bench/ingress/{user_id}` takes a Telegram
update and calls `services.handoff` exactly as a channel does (seal, durable queue, dedup
on update_id). It measures the core path without a channel's own work in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiohttp import web

from foundation import config, listener, logs
from foundation.types import Event
from gateway.app import create_app
from routing.handoff import Item
from routing.services import SERVICES


async def core_ingress(request: web.Request) -> web.Response:
    """One update, or a list of them handed off together (to fill a backlog quickly)."""
    body = orjson.loads(await request.read())
    updates = body if isinstance(body, list) else [body]
    items = [Item(Event("telegram.update", "telegram", u), dedup=str(u["update_id"])) for u in updates]
    await request.app[SERVICES].handoff(request.match_info["user_id"], items, dedup_scope="bench")
    return web.Response(body=b'{"ok":true}', content_type="application/json")


async def main(role: str) -> None:
    settings = config.load()
    logs.configure("WARNING")
    app = create_app(settings, role)
    app.router.add_post("/bench/ingress/{user_id}", core_ingress)
    runner = await listener.start(app)
    site = listener.Site(runner, settings.host, settings.port)
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


if __name__ == "__main__":
    from bench.sink import run

    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="all")
    run(main(parser.parse_args().role))
