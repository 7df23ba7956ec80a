"""A stand-in provider ingress for process-level fault tests: `POST /test/ingress/{user_id}`
with `{"seq": n}` hands one event over exactly as a channel does (dedup on `seq`) and
answers 200 only once it is durably queued, like a provider's webhook.

In-process: `create_app(settings, extra=[ingress.PLUGIN])`. Run as
`python -m tests.support.ingress serve --role web`: the real CLI with this module added to the
gateway's plugins."""

from __future__ import annotations

import sys

from aiohttp import web

from foundation.errors import BadRequest
from foundation.http import json_response, read_json_object
from foundation.types import Event
from routing.handoff import Item
from routing.plugin import Plugin
from routing.services import SERVICES


async def ingress(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    seq = body.get("seq")
    if not isinstance(seq, int):
        raise BadRequest("bad_seq", "seq must be an integer")
    services = request.app[SERVICES]
    item = Item(Event("telegram.update", "telegram", {"seq": seq, "text": body.get("text", "")}), dedup=str(seq))
    added = await services.handoff(request.match_info["user_id"], [item], dedup_scope="load")
    return json_response({"added": added})


PLUGIN = Plugin(name="test-ingress", routes=[web.post("/test/ingress/{user_id}", ingress)])


def setup(_app: web.Application) -> Plugin:
    return PLUGIN


if __name__ == "__main__":
    from gateway import app as gateway_app
    from gateway.cli import main

    gateway_app.PLUGINS = (*gateway_app.PLUGINS, "tests.support.ingress")
    sys.exit(main())
