"""Redis calls made in the same event-loop turn, sent as one pipeline.

Under load, many requests and deliveries each need one or two Redis calls at about the same
moment; sent one by one, every call is its own socket write, its own reply to wait for and its
own pass through the client. `Batcher` queues the calls made while the loop runs other ready
work and sends them together as soon as that work yields: one write, one read, no added wait
(the flush is the next callback of the loop, not a timer). Each caller gets its own replies or
its own error, as if it had made its calls alone. A batch is a pipeline, not a transaction:
each script in it stays atomic on its own, and the calls of one `run` go out together, in their
order, on one connection. Calls of different batches (more than `MAX_BATCH` at once, or made
while an earlier batch is still out) may run in any order relative to each other, as separate
commands from concurrent callers would.

redis-py's cluster pipeline refuses scripts, so on Redis Cluster every call is sent on its own
(in order, one after the other): same results, no batching.

Components get their batcher from `shared(redis)`: one per client, so the calls the hand-over,
the delivery worker, the chat lookup and the token broker make in one turn share one pipeline.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Queue = Callable[[Any], object]
"""Queues one command on a pipeline, e.g. `lambda p: p.zrem(key, member)`."""

MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Call:
    queue: Queue
    script: AsyncScript | None = None
    keys: Sequence[Any] = ()
    args: Sequence[Any] = ()


def command(queue: Queue) -> Call:
    return Call(queue)


def script(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Call:
    return Call(lambda p: p.evalsha(script.sha, len(keys), *keys, *args), script, keys, args)


class Batcher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._enabled = not isinstance(redis, RedisCluster)
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, *calls: Call) -> list[Any]:
        """Run `calls` in order in the next batch; return their replies, or raise the first error."""
        if not self._enabled:
            return [await self._alone(call) for call in calls]
        replies = await self._queue(calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                # Redis forgot its scripts (it restarted): this call loads its script again, and the
                # calls after it run again after it, so their order still holds.
                replies[i:] = [await self._alone(call) for call in calls[i:]]
                break
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def call(self, call: Call) -> Any:
        return (await self.run(call))[0]

    async def _alone(self, call: Call) -> Any:
        if call.script is not None:
            return await call.script(keys=call.keys, args=call.args)
        pipe = self._redis.pipeline(transaction=False)
        call.queue(pipe)
        return (await pipe.execute())[0]

    async def _queue(self, calls: Sequence[Call]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._pending and len(self._pending) + len(calls) > MAX_BATCH:
            self._flush()
        futures = [loop.create_future() for _ in calls]
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending += zip(calls, futures, strict=True)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for call, _ in batch:
                call.queue(pipe)
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # done: its caller was cancelled
                future.set_result(reply)


_SHARED: weakref.WeakKeyDictionary[Redis, Batcher] = weakref.WeakKeyDictionary()


def shared(redis: Redis) -> Batcher:
    """The one batcher of this client (made on first use, gone with the client)."""
    batcher = _SHARED.get(redis)
    if batcher is None:
        batcher = _SHARED[redis] = Batcher(redis)
    return batcher
