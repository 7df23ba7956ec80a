"""What the AI relay costs on top of talking to the provider directly.

Runs a loopback stand-in of Anthropic's Messages API and a gateway in front of it
(Redis on 127.0.0.1:6379, a throw-away key prefix), then measures the same work
both ways and prints the ratio relay / direct:

- 300 non-streaming requests, 20 at a time (latency per request);
- 40 concurrent streams of 500 deltas each (time to first event, time to last).

Run by hand: `.venv/bin/python -m bench.ai_relay`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from tests.support.anthropic import API_KEY, AnthropicStandIn, message, stream
from tests.support.gateway import make_settings, wipe

MODEL = "claude-sonnet-5-5"
CONCURRENCY = 20


async def timed_request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for _chunk in resp.content.iter_any():
            first = first or time.perf_counter() - started
    return first, time.perf_counter() - started


async def run(label: str, url: str, headers: dict[str, str]) -> dict[str, float]:
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one() -> float:
            async with limit:
                return (await timed_request(session, url, headers, body))[1]

        whole = await asyncio.gather(*(one() for _ in range(300)))
        out["whole p50 ms"] = statistics.median(whole) * 1000
        streams = await asyncio.gather(
            *(timed_request(session, url, headers, {**body, "stream": True}) for _ in range(40))
        )
        out["stream first-event p50 ms"] = statistics.median(s[0] for s in streams) * 1000
        out["stream last-byte p50 ms"] = statistics.median(s[1] for s in streams) * 1000
    print(f"{label:7s} " + "  ".join(f"{k} {v:8.2f}" for k, v in out.items()))
    return out


async def main() -> None:
    api = AnthropicStandIn()
    await api.start()
    # One user sends all of it: its ALLY_AI_CONCURRENCY must admit the 40 parallel streams.
    settings = make_settings(
        Path(tempfile.mkdtemp()), anthropic_api_key=API_KEY, anthropic_base_url=api.url, ai_concurrency=40
    )
    server = TestServer(create_app(settings), port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.put(
                server.make_url("/admin/v1/users/bench"),
                json={"server_url": "http://127.0.0.1:9/x", "server_public_key": "A" * 43},
                headers={"Authorization": f"Bearer {settings.admin_token}"},
            )
            token = (await resp.json())["server_token"]
        plans = [message("x" * 400)] * 300 + [stream(("tok",) * 500)] * 40
        api.plan(MODEL, *plans, message("x"))
        direct = await run(
            "direct", f"{api.url}/v1/messages", {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
        )
        api.plan(MODEL, *plans, message("x"))
        relay = await run("relay", str(server.make_url("/v1/ai/messages")), {"Authorization": f"Bearer {token}"})
        print("ratio   " + "  ".join(f"{k} {relay[k] / direct[k]:8.2f}" for k in direct))
    finally:
        await server.close()
        await api.close()
        await wipe(settings.key_prefix)


if __name__ == "__main__":
    asyncio.run(main())
