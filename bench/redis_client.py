"""CPU time per Redis round trip: redis-py (its pipeline, its GET) against the pipelining
connection `foundation.batching` sends on now, in the same run, on the same redis-server.

    .venv/bin/python -m bench.redis_client [--calls 20000] [--rounds 3] [--loop both] [--url URL]

Each figure is process CPU time (`time.process_time`, this process only: the server's work is
not counted) divided by the calls made, the median of `--rounds` interleaved rounds. Without
`--url` it starts its own redis-server on a unix socket (the embedded set-up of the gateway).
"The batcher as it was" is the previous `Batcher` (each batch through a redis-py pipeline on a
pooled connection), kept here as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop
from redis.asyncio import Redis

from bench.common import RedisServer
from foundation.batching import MAX_BATCH, Batcher, Call, script
from foundation.storage import connect, pipelined

# A hot-path-sized script: four keys, a few arguments, a short array back.
SCRIPT = """
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
local n = redis.call('INCR', KEYS[2])
return {n, redis.call('EXISTS', KEYS[3]), ARGV[2]}
"""
KEYS = ["{u:bench}:user", "{u:bench}:n", "{u:bench}:lease", "{u:bench}:q"]
ARGS = ["owner-1234", "txn_0123456789abcdef", 30000, 1712345678.123]


class BatcherAsItWas:
    """`foundation.batching.Batcher` before the pipelining connection: per-call futures, one
    redis-py pipeline per batch on a connection of the client's pool."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[tuple[Call, asyncio.Future[object]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, call: Call) -> Any:
        loop = asyncio.get_running_loop()
        if self._pending and len(self._pending) + 1 > MAX_BATCH:
            self._flush()
        future: asyncio.Future[object] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((call, future))
        (reply,) = await asyncio.gather(future, return_exceptions=True)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Call, asyncio.Future[object]]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for call, _ in batch:
                pipe.execute_command(*call.args)
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            replies = [exc] * len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)


Case = Callable[[], Awaitable[object]]


async def _nothing() -> None:
    """What the measuring loop itself costs per call, ten at once (asyncio.gather's tasks)."""


async def cpu_per_call(case: Case, calls: int, concurrency: int) -> tuple[float, float]:
    """CPU µs per call over `calls` calls, `concurrency` at a time (each group one batch): all of
    it (user and system), and the user part alone (the Python; system time is mostly the
    socket calls, alike for both clients, and the noisier on a shared machine)."""
    for _ in range(50):
        await case()  # warm: connections made, scripts loaded
    began, user = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    for _ in range(calls // concurrency):
        if concurrency == 1:
            await case()
        else:
            await asyncio.gather(*(case() for _ in range(concurrency)))
    total = time.process_time() - began
    user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - user
    return total / calls * 1e6, user / calls * 1e6


Row = tuple[str, float, float, float, float]
"""Name; CPU µs per call before, after; user CPU µs per call before, after."""


async def measure(url: str, calls: int, rounds: int) -> list[Row]:
    redis = connect(url)
    try:
        registered = redis.register_script(SCRIPT)
        await redis.script_load(SCRIPT)
        call = script(registered, KEYS, ARGS)
        old, new = BatcherAsItWas(redis), Batcher(redis)
        raw = pipelined(redis)
        get = ("GET", KEYS[1])
        pairs: Sequence[tuple[str, Case, Case, int]] = [
            ("GET, one at a time", lambda: redis.get(KEYS[1]), lambda: raw.execute([get]), 1),
            ("Batcher.call(script), one at a time", lambda: old.call(call), lambda: new.call(call), 1),
            ("Batcher.call(script), 10 at once (a batch)", lambda: old.call(call), lambda: new.call(call), 10),
        ]
        table: list[Row] = []
        for name, before, after, concurrency in pairs:
            befores, afters = [], []
            for _ in range(rounds):  # interleaved: noise on a shared machine hits both alike
                befores.append(await cpu_per_call(before, calls, concurrency))
                afters.append(await cpu_per_call(after, calls, concurrency))
            table.append(
                (
                    name,
                    statistics.median(b[0] for b in befores),
                    statistics.median(a[0] for a in afters),
                    statistics.median(b[1] for b in befores),
                    statistics.median(a[1] for a in afters),
                )
            )
        return table
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_client", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="both")
    parser.add_argument("--url", help="a Redis to use instead of starting one (keys {u:bench}:*)")
    args = parser.parse_args()
    server = None if args.url else RedisServer(appendonly=False).start()
    url = args.url or (server.url if server else "")
    try:
        loops = ("uvloop", "asyncio") if args.loop == "both" else (args.loop,)
        runner_harness: dict[str, tuple[float, float]] = {}
        for name in loops:
            factory = uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop
            with asyncio.Runner(loop_factory=factory) as runner:
                table = runner.run(measure(url, args.calls, args.rounds))
                runner_harness[name] = runner.run(cpu_per_call(_nothing, args.calls, 10))
            print(f"\n{name}, {url.split(':')[0]}, CPU µs per call (median of {args.rounds} rounds); user CPU alone")
            heads = f"{'redis-py':>9} {'pipelined':>9} {'ratio':>6}"
            print(f"{'':45} {heads}   {heads}")
            for row, before, after, user_before, user_after in table:
                print(
                    f"{row:45} {before:9.1f} {after:9.1f} {before / after:5.2f}×   "
                    f"{user_before:9.1f} {user_after:9.1f} {user_before / user_after:5.2f}×"
                )
            harness, harness_user = runner_harness[name]
            print(f"{'(of which the harness: 10 tasks at once)':45} {harness:9.1f} {'':16}   {harness_user:9.1f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
