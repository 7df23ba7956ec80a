"""The delivery worker (contract §4): one transaction in flight per user, in order, retried
with the same txn_id and body until a 2xx, with backoff, `Retry-After` and hold expiry.

This module schedules: it reads the `due` sorted set (users to look at, scored by the time to
look) and starts the serving of each user due (`routing/courier.py`: claim, send, acknowledge,
schedule the retry). Its parts:
- `routing/leases.py`: `{u:<id>}:lease`, which worker owns the user right now (expires if that
  worker dies);
- `routing/transactions.py`: `{u:<id>}:txn`, the transaction in flight with its exact body, so
  a retry is byte-identical, built from `{u:<id>}:q` (entries leave it only when acknowledged);
- `routing/sender.py`: one signed PUT to the user's server, and what its answer says;
- `routing/courier.py`: one user served with the three above.

Only the lease holder sends: the script that opens (or re-reads) the transaction before every
attempt checks and extends the lease in the same atomic step, and an attempt times out after
at most half the lease, so a worker that stalled or lost Redis cannot overlap with the one
that took over. A transaction costs the worker two round trips: open (the first also claims)
and acknowledge (leaving `due` and releasing when nothing is left). A user scheduled by this
process is served at once, without reading `due`: its first open goes out in the hand-over's
own round trip (`adopt`). Every script touches the keys of one user
only (one hash slot), so all of this works on Redis Cluster; the global `due` set is written
with plain commands, and a periodic sweep (`routing/sweep.py`) re-schedules any user whose queue is not empty but who
fell out of `due` (a crash between queueing and scheduling, or a Redis that lost writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import batching
from foundation.errors import ClosedError
from foundation.redis_keys import Keys
from foundation.tls import client_context
from routing import http1
from routing.courier import Courier, Served
from routing.handoff import DEFAULT_CAPS, Caps
from routing.leases import Leases
from routing.outage import Outages
from routing.registry import Registry
from routing.sender import Sender
from routing.sweep import sweep
from routing.transactions import FreshOpen, Transactions

log = logging.getLogger(__name__)


class DeliveryWorker:
    """Runs while the process runs; `wake()` makes it look at the due set at once."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        *,
        tls: ssl.SSLContext | None = None,
        hold_ttl: float,
        timeout: float = 10.0,
        lease: float = 20.0,
        concurrency: int = 1000,
        poll: float = 1.0,
        sweep: float = 60.0,
        production: bool = False,
        outages: Outages | None = None,
        caps: Caps = DEFAULT_CAPS,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._leases = Leases(redis, keys, lease=lease)
        self._sweep_every = sweep
        self._next_sweep = 0.0
        self._concurrency = concurrency
        self._poll = poll
        self._transactions = Transactions(
            redis,
            keys,
            registry,
            owner=self._leases.owner,
            lease_ms=self._leases.ms,
            hold_ttl=hold_ttl,
            caps=caps,
            outages=outages,
        )
        # An attempt never outlives half the lease, so a takeover cannot overlap with it.
        self._client = http1.Client(production=production, tls=tls or client_context())
        self._sender = Sender(self._client, timeout=min(timeout, lease / 2), production=production)
        self._active: dict[str, asyncio.Task[Served]] = {}
        self._skip_until: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._local: set[str] = set()
        """Users this process just scheduled: claimed at once, without reading `due`."""
        self._running = False
        self._look = True
        """Read `due` on the next round (set by other processes' wake-ups and by the clock)."""
        self._next_look = 0.0
        self._closed = False
        self._courier = Courier(redis, keys, self._leases, self._transactions, self._sender, outages, self.wake)

    def wake(self, user_id: str | None = None) -> None:
        """Look at `user_id` now (this process just scheduled it), or at the whole `due` set."""
        if user_id is None:
            self._look = True
        elif self._running:
            self._local.add(user_id)
        self._wakeup.set()

    def adopt(self, user_id: str) -> batching.Rider | None:
        """Serve `user_id` from a first open that the caller sends in its own round trip, right
        after queueing an event for the user (the returned rider; the caller must settle it).
        None when this process does not deliver now, is full, or serves the user already: the
        caller then schedules it as usual."""
        if not self._running or self._closed or user_id in self._active or len(self._active) >= self._concurrency:
            return None
        first = self._transactions.fresh_open(user_id)
        self._serve(user_id, first)
        return first.rider

    async def run(self) -> None:
        if self._closed:
            raise ClosedError("delivery worker is closed")
        self._running = True
        listener = asyncio.create_task(self._listen(), name="delivery-wake-listener")
        me = asyncio.current_task()
        try:
            # A library that swallows a CancelledError still leaves `cancelling()` raised: stop then too.
            while not self._closed and not (me is not None and me.cancelling()):
                self._wakeup.clear()
                try:
                    await self._maybe_sweep()
                    delay = await self._round()
                except (RedisError, OSError) as exc:
                    log.warning("delivery loop: redis unavailable", extra={"error": type(exc).__name__})
                    delay = 1.0
                except Exception:
                    # The loop must outlive any bug in one round; the next round starts afresh.
                    log.exception("delivery loop round failed")
                    delay = 1.0
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the wake-up fires, and this loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
        finally:
            self._running = False
            self._local.clear()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await listener

    async def _listen(self) -> None:
        """Wake on other processes' enqueues (pub/sub); reconnects when Redis comes back."""
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._keys.wake_channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._heard(message.get("data"))
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("wake listener failed; restarting it")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _heard(self, data: object) -> None:
        """Another process scheduled a user, or its server pinged (the message is the user's id):
        read `due`. A user being served here right now is looked at again as its delivery ends:
        a ping that came after the delivery read the ping flag would otherwise wait for the next
        poll, since the read of `due` it causes skips a user being served."""
        if isinstance(data, bytes) and (user_id := data.decode(errors="replace")) in self._active:
            self._local.add(user_id)
        self.wake()

    async def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every
        rescheduled = await self.sweep()
        if rescheduled:
            log.info("sweep re-scheduled users with waiting events", extra={"count": rescheduled})

    async def sweep(self) -> int:
        """Re-schedule users with work who fell out of `due` (see `routing/sweep.py`)."""
        added = await sweep(self._redis, self._keys)
        if added:
            self._wakeup.set()
        return added

    async def _round(self) -> float:
        """Start deliveries; return how long to wait for the next round unless woken earlier.

        An event queued by this process names its user (`wake(user_id)`), and that user is
        claimed at once: no read of `due`, no poll interval on the path of an event that meets an
        idle worker. `due` is read when the clock says a retry is due, when another process
        wakes this one, and at least every `poll` seconds (for users scheduled by processes that
        do not deliver, or by a worker that died)."""
        now = time.monotonic()
        if self._look or now >= self._next_look:
            self._look = False
            upcoming = await self._tick()
            self._next_look = time.monotonic() + upcoming
        else:
            # A user being served here stays in `_local`: `due` is read as its delivery ends.
            busy = {u for u in self._local if u in self._active}
            self._start([u for u in self._local if u not in busy])
            self._local = busy
        return max(0.0, self._next_look - time.monotonic())

    async def _tick(self) -> float:
        """Read `due` and start a delivery for each user due now; return the seconds until the
        next due time (at most `poll`)."""
        now = time.time()
        # Those are in `due` too; but a wake-up for a user being served here must outlive this
        # read, or `_finished` would not look again for it (a ping while its attempt fails).
        self._local = {u for u in self._local if u in self._active}
        free = self._concurrency - len(self._active)
        if free <= 0:
            return self._poll
        # One round trip: who is due now, and when the next one after them is.
        look = self._redis.pipeline(transaction=False)
        limit = free + len(self._active) + 50
        look.zrangebyscore(self._keys.due, "-inf", now, start=0, num=limit)
        look.zrangebyscore(self._keys.due, f"({now}", "+inf", start=0, num=1, withscores=True)
        due, upcoming = await look.execute()
        candidates: list[str] = []
        for raw in due:
            user_id = raw.decode()
            if user_id in self._active or self._skip_until.get(user_id, 0) > now:
                continue
            if len(self._active) + len(candidates) >= self._concurrency:
                break
            candidates.append(user_id)
        self._start(candidates)
        if len(self._skip_until) > 10_000:
            self._skip_until = {u: t for u, t in self._skip_until.items() if t > now}
        # Users due now but not claimed (served here already, or leased elsewhere) are looked at
        # again when their delivery finishes (`_finished` wakes the loop) or within one poll.
        if len(due) >= limit and candidates:
            return 0.0  # more may be due than this round read
        if not upcoming:
            return self._poll
        return max(0.0, min(self._poll, float(upcoming[0][1]) - time.time()))

    def _start(self, user_ids: list[str]) -> None:
        """A delivery task per user; each claims its user's lease in its first call (the calls of
        tasks started together share one round trip), and ends at once if another worker has it."""
        room = self._concurrency - len(self._active)
        if len(user_ids) > room:
            self._look = True  # the rest stay in `due` for a later round
            user_ids = user_ids[:room]
        for user_id in user_ids:
            self._serve(user_id)

    def _serve(self, user_id: str, first: FreshOpen | None = None) -> None:
        task = asyncio.create_task(self._courier.serve(user_id, first), name=f"deliver-{user_id}")
        self._active[user_id] = task
        task.add_done_callback(functools.partial(self._finished, user_id))

    def _finished(self, user_id: str, task: asyncio.Task[Served]) -> None:
        self._active.pop(user_id, None)
        served = None if task.cancelled() or task.exception() is not None else task.result()
        if served is Served.ELSEWHERE:
            # Another worker serves the user; look again when its lease could have lapsed.
            self._skip_until[user_id] = time.time() + min(self._leases.ms / 1000, 1.0)
        woken = user_id in self._local
        self._local.discard(user_id)
        # A delivery that ended settled (nothing left, a retry scheduled, or another worker
        # serving it) needs no look at `due`; any other end may have left work. So may a wake-up
        # for this user while it was served; `due` then says whether it is due now (it may just
        # have been given a retry time, which a claim at once would not respect).
        if woken or served is Served.UNSETTLED or served is None:
            self._look = True
            self._wakeup.set()

    async def aclose(self) -> None:
        self._closed = True
        self._courier.closed = True
        self._sender.close()
        self._wakeup.set()
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()
