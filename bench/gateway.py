"""The gateway, configured from `ALLY_*` and run exactly as `ally-gateway serve [--workers N]`
(`gateway.serving`: one process, or N supervised processes on one port), printing
`READY <port>` once every process serves.

It adds one route that exists only here: `POST /bench/ingress/{user_id}` takes a Telegram
update and calls `services.handoff` exactly as a channel does (seal, durable queue, dedup
on update_id). It measures the core path without a channel's own work in front of it.

The app is imported only inside `serve`, as the real command does: with several processes
the metrics are shared across them, which must be set up before they are made.
"""

from __future__ import annotations

import argparse
import sys

import orjson
from aiohttp import web

from foundation import config, logs
from foundation.config import Settings


async def core_ingress(request: web.Request) -> web.Response:
    """One update, or a list of them handed off together (to fill a backlog quickly)."""
    from foundation.types import Event
    from routing.handoff import Item
    from routing.services import SERVICES

    body = orjson.loads(await request.read())
    updates = body if isinstance(body, list) else [body]
    items = [Item(Event("telegram.update", "telegram", u), dedup=str(u["update_id"])) for u in updates]
    await request.app[SERVICES].handoff(request.match_info["user_id"], items, dedup_scope="bench")
    return web.Response(body=b'{"ok":true}', content_type="application/json")


def make_app(settings: Settings, role: str) -> web.Application:
    from gateway.app import create_app

    app = create_app(settings, role)
    app.router.add_post("/bench/ingress/{user_id}", core_ingress)
    return app


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def main(role: str, workers: int) -> int:
    from gateway import serving

    settings = config.load()
    logs.configure(settings.log_level)
    return serving.serve(settings, role, workers, make_app=make_app, listening=ready)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="all")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sys.exit(main(args.role, args.workers))
