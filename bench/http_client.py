"""CPU time per delivery request on the client side: aiohttp's client, called exactly as the
sender called it before it had a client of its own; the delivery client (`routing/http1.py`),
as the sender calls it now; and a bare keep-alive HTTP/1.1 exchange on an asyncio stream (what
any HTTP client must do at the least: write the request, read the head and the body).

    .venv/bin/python -m bench.http_client [--requests 3000] [--rounds 3]

The server (aiohttp, answering `{"ok":true}`) runs in its own process, so each figure is this
process's CPU time (`time.process_time`) divided by the requests made: the client's cost alone,
the median of `--rounds` interleaved rounds. It prints and saves nothing (`bench/README.md`
has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from bench.common import free_port
from foundation.tls import client_context
from routing import http1
from routing.sender import MAX_ANSWER_BYTES

SERVER = """
import sys
from aiohttp import web
async def answer(request):
    await request.read()
    return web.Response(body=b'{"ok":true}', content_type="application/json")
app = web.Application()
app.router.add_put("/u/{user}/ally/v1/transactions/{txn}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
BODY = b'{"txn_id":"txn_0123","events":[' + b",".join([b'{"e":"' + b"x" * 600 + b'"}']) + b"]}"
HEADERS = {
    "webhook-id": "txn_0123",
    "webhook-timestamp": "1764662400",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    "content-type": "application/json",
}


async def main(requests: int, rounds: int) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, str(port))
    try:
        await _wait_for(port)
        base = f"http://127.0.0.1:{port}/u/u1/ally/v1/transactions/"
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        timeout = aiohttp.ClientTimeout(total=10)

        async def with_aiohttp(i: int) -> None:
            async with session.put(
                f"{base}txn_{i}",
                data=BODY,
                headers=HEADERS,
                timeout=timeout,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=frozenset({"Accept-Encoding"}),
            ) as resp:
                await resp.content.read(MAX_ANSWER_BYTES)
                _ = resp.status, resp.headers.get("Retry-After")

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        fixed = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()).encode()

        async def bare(i: int) -> None:
            writer.write(
                b"PUT /u/u1/ally/v1/transactions/txn_%d HTTP/1.1\r\nHost: 127.0.0.1\r\n%scontent-length: %d\r\n\r\n%s"
                % (i, fixed, len(BODY), BODY)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)

        lean = http1.Client(production=False, tls=client_context())
        lean_headers = list(HEADERS.items())
        base_url = f"http://127.0.0.1:{port}/u/u1"

        async def delivery_client(i: int) -> None:
            answer = await lean.put(
                base_url, f"/ally/v1/transactions/txn_{i}", lean_headers, BODY, limit=MAX_ANSWER_BYTES
            )
            _ = answer.status, answer.retry_after

        clients: dict[str, Callable[[int], Awaitable[None]]] = {
            "aiohttp": with_aiohttp,
            "delivery": delivery_client,
            "bare": bare,
        }
        for client in clients.values():  # warm: connections open, code paths hot
            for i in range(200):
                await client(i)
        cpu: dict[str, list[float]] = {name: [] for name in clients}
        for r in range(rounds):
            for name in clients if r % 2 == 0 else reversed(list(clients)):
                started = time.process_time()
                for i in range(requests):
                    await clients[name](i)
                cpu[name].append((time.process_time() - started) / requests * 1e6)
        writer.close()
        await session.close()
        await lean.close()
        a, b = statistics.median(cpu["aiohttp"]), statistics.median(cpu["bare"])
        d = statistics.median(cpu["delivery"])
        for label, name in (
            ("aiohttp client, as it was called:", "aiohttp"),
            ("the delivery client (routing/http1.py):", "delivery"),
            ("bare keep-alive stream:", "bare"),
        ):
            rounds_text = ", ".join(f"{x:.0f}" for x in cpu[name])
            print(f"{label:40} {statistics.median(cpu[name]):.0f} µs CPU per request ({rounds_text})")
        print(f"aiohttp against bare: {a - b:.0f} µs per request ({a / b:.2f}×)")
        print(f"delivery client against aiohttp: {d - a:+.0f} µs per request ({d / a:.2f}×)")
    finally:
        server.terminate()
        await server.wait()


async def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.install()
    asyncio.run(main(args.requests, args.rounds))
