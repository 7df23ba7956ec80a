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

On one Redis the batches go out on a lean pipelining connection of the client's
(`foundation.pipelined`: no redis-py pipeline objects, one write per batch, replies matched in
order; the client must be made by `foundation.storage.connect`, which owns and closes it), not
through redis-py's pool. One connection, not several: against single-threaded Redis it is the
cheapest and keeps batches in order; a 4 MiB reply (the largest transaction) delays the ones
behind it by the 3-5 ms it takes to arrive, which a second connection would cut to ~1.5 ms at
the cost of the big reply itself taking 8-9 ms. A call is raw arguments, and its reply is raw:
bytes, int, list or None as Redis answers on RESP2 (`HGETALL` is a flat list), an error reply
redis-py's exception for it. A batch whose connection is lost or times out is sent again, whole, on a new
connection, as redis-py's pipeline did with the client's `Retry` (3 retries, backoff): a write
whose reply was lost may then run twice, which the callers' writes are made to bear (dedup ids,
transaction ids, NX); after the last retry each call of the batch gets the error.

On Redis Cluster every call is sent on its own (in order, one after the other) through the
cluster client: same results, no batching; its replies are brought to the same raw shapes.

A lazy run (`lazy=True`: a call whose caller can wait a little, such as the acknowledgement of
a delivered transaction) waits up to `LAZY_WAIT` for company while other calls come less than
`LAZY_WAIT` apart on average (`_Lane.gap`): the next call that is not lazy takes it along in its
batch, so under steady traffic a lazy call often costs no round trip of its own. On a quieter
lane it goes out at the next turn of the loop (waiting would mostly cost a timer's wake-up).

Durable calls (`durable=True`: a write someone is told is stored) are followed, when replicas
are required (`Batcher.ack`, from ALLY_ACK_REPLICAS), by one Redis `WAIT` per flush, on the
same connection and after every write of the batch: one wait for the whole batch, not one per
event. Fewer confirmations than required make each durable call of the batch raise
`NotReplicated` (its write is on the primary, but a failover could lose it; the caller answers
503 and the retry is harmless: acknowledged writes are idempotent). On a cluster the `WAIT`
goes to the node that took the write, in the same pipeline. A `WAIT` holds its connection until
the replicas answer, so runs with a durable call go on a connection of their own, one batch at a
time: what is queued meanwhile goes out together, behind one `WAIT`, when the last one returns
(a frozen replica costs a durable write two `WAIT` timeouts at most, and plain calls nothing).

Components get their batcher from `shared(redis)`: one per client, so the calls the hand-over,
the delivery worker, the chat lookup and the token broker make in one turn share one pipeline.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from foundation import metrics, storage
from foundation.errors import NotReplicated
from foundation.pipelined import Arg, PipelinedConnection, pack

MAX_BATCH = 256
LAZY_WAIT = 0.002
"""Seconds a lazy call waits for company before it goes out alone."""
_GAP_WEIGHT = 0.25  # the newest gap's weight in `_Lane.gap`
_GAP_CAP = 10 * LAZY_WAIT  # a longer gap counts as this: after a quiet spell a few close calls make a lane busy


@dataclass(frozen=True, slots=True)
class Call:
    args: tuple[Arg, ...]
    """The command and its arguments, as sent: `("ZREM", key, member)`."""
    script: AsyncScript | None = None
    keys: tuple[Arg, ...] = ()
    """The keys it writes; on a cluster, the first one's node waits for replicas."""
    durable: bool = False
    """Acknowledged to someone as stored: on `Ack.replicas` replicas before the call returns."""
    wire: bytes = field(init=False, repr=False, compare=False)
    """The command in RESP, packed when the call is made: a bad argument fails its caller alone."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", pack(self.args))


@dataclass(frozen=True, slots=True)
class Ack:
    """What a durable write waits for: `replicas` confirmations within `timeout_ms`."""

    replicas: int = 0
    timeout_ms: int = 500
    per_node: Mapping[str, int] = field(default_factory=dict)
    """On a cluster, what the node (`host:port`) of a write waits for, where it differs."""

    def on(self, node: str) -> int:
        return self.per_node.get(node, self.replicas)


_NO_ACK = Ack()


def command(*args: Arg, durable: bool = False, key: Arg | None = None) -> Call:
    """A plain command, e.g. `command("ZREM", key, member)`, answered raw; a durable one names
    its key (on a cluster, its node waits for replicas)."""
    return Call(args, keys=() if key is None else (key,), durable=durable)


def script(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], *, durable: bool = False) -> Call:
    # EVALSHA by name: the cluster pipeline refuses its `evalsha` method, not the command.
    return Call(("EVALSHA", script.sha, len(keys), *keys, *args), script, tuple(keys), durable)


@dataclass(frozen=True, slots=True)
class Rider:
    """A call that goes out in someone else's round trip: whoever sends it hands its reply (or
    its error) to `reply`, and fails it when the round trip does not happen."""

    call: Call
    reply: asyncio.Future[Any]

    def settle(self, reply: Any) -> None:
        if self.reply.done():
            return
        if isinstance(reply, BaseException):
            self.reply.set_exception(reply)
        else:
            self.reply.set_result(reply)


Run = tuple[Sequence[Call], "asyncio.Future[list[Any]]"]
"""The calls of one `run`, and where their replies go."""


class _Lane:
    """The runs queued for one connection. A grouped lane has one batch out at a time."""

    __slots__ = ("connection", "gap", "grouped", "last", "loop", "out", "pending", "size", "waiting")

    def __init__(self, connection: PipelinedConnection, *, grouped: bool) -> None:
        self.connection = connection
        self.waiting: asyncio.TimerHandle | None = None
        """Armed while only lazy calls are pending: their flush at the end of their wait."""
        self.loop = asyncio.get_running_loop()
        """The loop its connection belongs to (asked once: on Python 3.11 each ask is a getpid)."""
        self.grouped = grouped
        self.pending: list[Run] = []
        self.size = 0
        """Calls pending."""
        self.out = 0
        """Batches sent and not answered yet."""
        self.gap = _GAP_CAP  # moving average of the seconds between runs that are not lazy
        self.last = self.loop.time()

    def eager(self) -> None:
        """A run that is not lazy arrived: fold its gap from the last one into the average."""
        now = self.loop.time()
        self.gap += (min(now - self.last, _GAP_CAP) - self.gap) * _GAP_WEIGHT
        self.last = now


class _Batch:
    """Runs sent together: their calls packed in one write, then a WAIT when one is durable."""

    __slots__ = ("ack", "calls", "count", "data", "lane", "patience", "runs")

    def __init__(self, lane: _Lane, runs: list[Run], ack: Ack) -> None:
        self.lane = lane
        self.runs = runs
        self.calls = [call for calls, _ in runs for call in calls]
        self.ack = ack if any(call.durable for call in self.calls) else _NO_ACK
        wire = [call.wire for call in self.calls]
        if self.ack.replicas:
            # After every write of the batch, on their connection: WAIT covers them all.
            wire.append(pack(("WAIT", self.ack.replicas, self.ack.timeout_ms)))
        self.data, self.count = b"".join(wire), len(wire)
        # A WAIT may leave Redis silent for its own timeout.
        self.patience = self.ack.timeout_ms / 1000 if self.ack.replicas else 0.0


class Batcher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._plain: _Lane | None = None
        self._durable: _Lane | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.ack = Ack()
        self.batches = 0
        """Batches sent so far (each one write on its connection, retries aside)."""

    async def run(self, *calls: Call, lazy: bool = False) -> list[Any]:
        """Run `calls` in order in the next batch; return their replies, or raise the first error.
        `lazy`: for calls nobody waits on (an acknowledgement), which may wait up to `LAZY_WAIT`
        for other calls to share their round trip (module doc); any other call sends them at once."""
        replies = await self.run_each(*calls, lazy=lazy)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def run_each(self, *calls: Call, lazy: bool = False) -> list[Any]:
        """As `run`, with each call's error in its reply's place: for calls whose callers differ
        (one of them may fail without failing the others). `lazy`: see `run`."""
        replies = await self._run(calls, lazy=lazy)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            return await self._reloaded(calls, replies)
        return replies

    async def call(self, call: Call) -> Any:
        (reply,) = await self.run_each(call)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _reloaded(self, calls: Sequence[Call], replies: list[Any]) -> list[Any]:
        """Redis forgot its scripts (it restarted): load them and run the call that found one gone
        and the ones after it again, in one batch, so their order still holds."""
        i = next(i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError))
        for call in calls[i:]:
            if call.script is not None:
                await self._redis.script_load(call.script.script)
        replies[i:] = await self._run(calls[i:])
        return replies

    def _run(self, calls: Sequence[Call], *, lazy: bool = False) -> Awaitable[list[Any]]:
        """The replies of `calls`, errors in their place (a future: one coroutine less per call).
        `lazy`: the calls may wait up to `LAZY_WAIT` for other calls to go out with (on a busy lane)."""
        if self._cluster:
            return self._each_alone(calls)
        lane = self._lane(self.ack.replicas > 0 and any(call.durable for call in calls))
        if lane.pending and lane.size + len(calls) > MAX_BATCH:
            self._flush(lane)
        loop = lane.loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not lazy:
            lane.eager()
        if not lane.pending:
            if lazy and lane.gap < LAZY_WAIT:
                lane.waiting = loop.call_later(LAZY_WAIT, self._flush_when_ready, lane)
            else:
                loop.call_soon(self._flush_when_ready, lane)
        elif not lazy and lane.waiting is not None:
            # Company for the lazy calls: they go out now, with these.
            lane.waiting.cancel()
            lane.waiting = None
            loop.call_soon(self._flush_when_ready, lane)
        lane.pending.append((calls, future))
        lane.size += len(calls)
        return future

    async def _each_alone(self, calls: Sequence[Call]) -> list[Any]:
        return [await self._alone(call) for call in calls]

    def _lane(self, durable: bool) -> _Lane:
        lane = self._durable if durable else self._plain
        if lane is None:
            lane = _Lane(storage.pipelined(self._redis), grouped=durable)
            if durable:
                self._durable = lane
            else:
                self._plain = lane
        return lane

    def _flush_when_ready(self, lane: _Lane) -> None:
        if not (lane.grouped and lane.out):  # else the batch out sends these when it returns
            self._flush(lane)

    def _flush(self, lane: _Lane) -> None:
        if lane.waiting is not None:
            lane.waiting.cancel()
            lane.waiting = None
        runs, lane.pending, lane.size = lane.pending, [], 0
        if not runs:
            return
        lane.out += 1
        self.batches += 1
        batch = _Batch(lane, runs, self.ack)
        # Connected (nearly always): written now, the replies handed over as they are parsed.
        # Else, or when that write's connection fails, a task connects and retries.
        # The callback is not kept on the batch: a batch and its callback holding each other would
        # leave every batch, its calls and their futures to the cycle collector.
        answered = functools.partial(self._answered, batch)
        if not lane.connection.send_nowait(batch.data, batch.count, batch.patience, answered):
            self._retry(batch, None)

    def _retry(self, batch: _Batch, failed: Exception | None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch, failed))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch, failed: Exception | None) -> None:
        """Send `batch` with the client's Retry, as redis-py's pipeline did: `failed` is the error
        its first write met, and counts as the first attempt."""
        connection = batch.lane.connection
        first = [failed] if failed is not None else []

        async def attempt() -> list[Any]:
            if first:
                raise first.pop()
            return await connection.send(batch.data, batch.count, patience=batch.patience)

        try:
            replies = await connection.endpoint.retry.call_with_retry(
                attempt, _dropped, is_retryable=lambda _error: not connection.closed
            )
            replies = _confirmed(batch.calls, replies, batch.ack)
        except asyncio.CancelledError:
            for _, future in batch.runs:
                future.cancel()
            self._settled(batch)
            raise
        except Exception as exc:
            replies = [exc] * len(batch.calls)
        self._settle(batch, replies)

    def _answered(self, batch: _Batch, result: list[Any] | Exception) -> None:
        if isinstance(result, Exception):
            self._retry(batch, result)  # the Retry decides whether this error is worth another try
        else:
            self._settle(batch, _confirmed(batch.calls, result, batch.ack))

    def _settle(self, batch: _Batch, replies: list[Any]) -> None:
        self._settled(batch)
        start = 0
        for calls, future in batch.runs:
            if not future.done():  # done: its caller was cancelled
                future.set_result(replies[start : start + len(calls)])
            start += len(calls)

    def _settled(self, batch: _Batch) -> None:
        lane = batch.lane
        lane.out -= 1
        if lane.grouped and lane.pending and not lane.out:
            self._flush(lane)

    async def _alone(self, call: Call) -> Any:
        """One call on a cluster, in a pipeline of its own (with its WAIT, on its node)."""
        ack = self.ack if call.durable else _NO_ACK
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command(*call.args)
            if ack.replicas:
                await self._redis.initialize()  # the slot map, before asking it for a node
                node = self._redis.get_node_from_key(call.keys[0])
                ack = Ack(ack.on(node.name), ack.timeout_ms)
            if ack.replicas:
                pipe.execute_command("WAIT", ack.replicas, ack.timeout_ms, target_nodes=node)
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            return exc
        return _confirmed([call], [_raw(replies[0]), *replies[1:]], ack)[0]


async def _dropped(error: Exception) -> None:
    """Before a retry: nothing to do, a failed pipelining connection has already let go of its socket."""


def _raw(reply: Any) -> Any:
    """A cluster client's reply in the shape the pipelining connection gives: redis-py speaks RESP3
    and applies its response callbacks by command name, so a map (`HGETALL`) becomes the flat
    list RESP2 sends, a set a list and a boolean (`HSETNX`, a Lua `true`) 1 or 0. A status reply
    that redis-py turns into True (`SET`) stays 1: compare such replies for truth, not to b"OK"."""
    if isinstance(reply, dict):
        return [_raw(item) for pair in reply.items() for item in pair]
    if isinstance(reply, list | set | tuple):
        return [_raw(item) for item in reply]
    if isinstance(reply, bool):
        return int(reply)
    return reply


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
