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

On Redis Cluster every call is sent on its own (in order, one after the other): same results,
no batching.

Durable calls (`durable=True`: a write someone is told is stored) are followed, when replicas
are required (`Batcher.ack`, from ALLY_ACK_REPLICAS), by one Redis `WAIT` per flush, on the
same connection and after every write of the batch: one wait for the whole batch, not one per
event. Fewer confirmations than required make each durable call of the batch raise
`NotReplicated` (its write is on the primary, but a failover could lose it; the caller answers
503 and the retry is harmless: acknowledged writes are idempotent). On a cluster the `WAIT`
goes to the node that took the write, in the same pipeline.

Components get their batcher from `shared(redis)`: one per client, so the calls the hand-over,
the delivery worker, the chat lookup and the token broker make in one turn share one pipeline.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from foundation import metrics
from foundation.errors import NotReplicated

Queue = Callable[[Any], object]
"""Queues one command on a pipeline, e.g. `lambda p: p.zrem(key, member)`."""

MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Call:
    queue: Queue
    script: AsyncScript | None = None
    keys: Sequence[Any] = ()
    args: Sequence[Any] = ()
    durable: bool = False
    """Acknowledged to someone as stored: on `Ack.replicas` replicas before the call returns."""


@dataclass(frozen=True, slots=True)
class Ack:
    """What a durable write waits for: `replicas` confirmations within `timeout_ms`."""

    replicas: int = 0
    timeout_ms: int = 500
    per_node: Mapping[str, int] = field(default_factory=dict)
    """On a cluster, what the node (`host:port`) of a write waits for, where it differs."""

    def on(self, node: str) -> int:
        return self.per_node.get(node, self.replicas)


def command(queue: Queue, *, durable: bool = False, key: Any = None) -> Call:
    """A plain command; a durable one names its key (on a cluster, its node waits for replicas)."""
    return Call(queue, keys=() if key is None else (key,), durable=durable)


def script(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], *, durable: bool = False) -> Call:
    # EVALSHA by name: the cluster pipeline refuses its `evalsha` method, not the command.
    return Call(
        lambda p: p.execute_command("EVALSHA", script.sha, len(keys), *keys, *args), script, keys, args, durable
    )


Pending = list[tuple[Call, "asyncio.Future[Any]"]]


class Batcher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._pending: Pending = []
        self._sending: set[asyncio.Task[None]] = set()
        self.ack = Ack()

    async def run(self, *calls: Call) -> list[Any]:
        """Run `calls` in order in the next batch; return their replies, or raise the first error."""
        replies = await self._run(calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                # Redis forgot its scripts (it restarted): load them and run this call and the
                # ones after it again, in one batch, so their order still holds.
                for call in calls[i:]:
                    if call.script is not None:
                        await self._redis.script_load(call.script.script)
                replies[i:] = await self._run(calls[i:])
                break
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def call(self, call: Call) -> Any:
        return (await self.run(call))[0]

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        if self._cluster:
            return [await self._alone(call) for call in calls]
        return await self._queue(calls)

    async def _alone(self, call: Call) -> Any:
        """One call on a cluster, in a pipeline of its own (with its WAIT, on its node)."""
        ack = self.ack if call.durable else Ack()
        try:
            pipe = self._redis.pipeline(transaction=False)
            call.queue(pipe)
            if ack.replicas:
                await self._redis.initialize()  # the slot map, before asking it for a node
                node = self._redis.get_node_from_key(call.keys[0])
                ack = Ack(ack.on(node.name), ack.timeout_ms)
            if ack.replicas:
                pipe.execute_command("WAIT", ack.replicas, ack.timeout_ms, target_nodes=node)
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            return exc
        return _confirmed([call], replies, ack)[0]

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

    async def _send(self, batch: Pending) -> None:
        calls = [call for call, _ in batch]
        ack = self.ack if any(call.durable for call in calls) else Ack()
        try:
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                call.queue(pipe)
            if ack.replicas:
                # After every write of the batch, on their connection: WAIT covers them all.
                pipe.execute_command("WAIT", ack.replicas, ack.timeout_ms)
            replies = _confirmed(calls, await pipe.execute(raise_on_error=False), ack)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            replies = [exc] * len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # done: its caller was cancelled
                future.set_result(reply)


def _confirmed(calls: Sequence[Call], replies: list[Any], ack: Ack) -> list[Any]:
    """The calls' replies, a durable call's replaced by NotReplicated when too few replicas confirmed."""
    if not ack.replicas:
        return replies
    *replies, confirmed = replies
    if isinstance(confirmed, Exception):
        return [confirmed if call.durable else reply for call, reply in zip(calls, replies, strict=True)]
    if int(confirmed) >= ack.replicas:
        return replies
    metrics.NOT_REPLICATED.inc()
    failed = NotReplicated(int(confirmed), ack.replicas)
    return [failed if call.durable else reply for call, reply in zip(calls, replies, strict=True)]


_SHARED: weakref.WeakKeyDictionary[Redis, Batcher] = weakref.WeakKeyDictionary()


def shared(redis: Redis) -> Batcher:
    """The one batcher of this client (made on first use, gone with the client)."""
    batcher = _SHARED.get(redis)
    if batcher is None:
        batcher = _SHARED[redis] = Batcher(redis)
    return batcher
