"""What the fallback providers' stand-ins share: a loopback server whose answers per model are scripted.

`plan(model, step, ...)` says what the next calls for that model get (the last
step repeats); every call is recorded with its body and headers, and every byte
sent is kept in `sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Call:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    path: str


Step = Callable[[web.Request, "ScriptedApi", dict[str, Any], str], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedApi:
    calls: list[Call] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    plans: dict[str, list[Step]] = field(default_factory=dict)
    server: TestServer | None = None

    def plan(self, model: str, *steps: Step) -> None:
        self.plans[model] = list(steps)

    def calls_for(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/")).rstrip("/")

    def next_step(self, model: str, missing: Step) -> Step:
        plan = self.plans.get(model) or [missing]
        return plan.pop(0) if len(plan) > 1 else plan[0]

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=32 << 20)
        self.routes(app)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.close()


def json_answer(api: ScriptedApi, body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    raw = json.dumps(body).encode()
    api.sent.append(raw)
    return web.Response(status=status, body=raw, content_type="application/json", headers=headers)


async def sse_answer(
    request: web.Request, api: ScriptedApi, events: list[bytes], *, fail_after: int | None = None
) -> web.StreamResponse:
    """Writes `events` as a stream; with `fail_after`, cuts the connection after that many."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index, event in enumerate(events):
        if fail_after is not None and index == fail_after:
            assert request.transport is not None
            request.transport.abort()
            return response
        api.sent.append(event)
        await response.write(event)
    await response.write_eof()
    return response


def hang() -> Step:
    async def step(request: web.Request, api: ScriptedApi, body: dict[str, Any], model: str) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return step
