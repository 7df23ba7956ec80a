"""The delivery worker (contract §4): one transaction in flight per user, in order, retried
with the same txn_id and body until a 2xx, with backoff, `Retry-After` and hold expiry.

Coordination across processes lives in Redis:
- `due` (sorted set): users to look at, scored by the time to look;
- `{u:<id>}:lease`: which worker owns the user right now (expires if that worker dies);
- `{u:<id>}:txn`: the transaction in flight, its exact body, so a retry is byte-identical;
- `{u:<id>}:q`: the stream of sealed events; entries leave it only when acknowledged.

Only the lease holder sends: the script that opens (or re-reads) the transaction before every
attempt checks and extends the lease in the same atomic step, and an attempt times out after
at most half the lease, so a worker that stalled or lost Redis cannot overlap with the one
that took over. The same script returns the user's server URL and webhook secrets, so an
event costs the worker about four round trips: open, acknowledge, leave `due`, release. Every script touches the keys of
one user only (one hash slot), so all of this works on Redis Cluster; the global `due`
set is written with plain commands, and a periodic sweep (`routing/sweep.py`) re-schedules any user whose
queue is not empty but who fell out of `due` (a crash between queueing and scheduling,
or a Redis that lost writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import io
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway import batching, metrics
from gateway.clock import iso, iso_now
from gateway.errors import ApiError, ClosedError, GatewayError
from gateway.types import SealedEvent
from routing import signing
from routing.handoff import DEFAULT_CAPS, Caps, new_id
from routing.outage import Outages
from routing.redis_keys import Keys
from routing.registry import Registry, Target
from routing.sealing import seal
from routing.sweep import sweep
from routing.urls import validate_server_url

log = logging.getLogger(__name__)

MAX_BATCH = 100
# The largest transaction body a server must accept (docs/delivery.md). One event alone is far
# smaller: ingress bodies are at most 1 MiB, about 1.4 MB once sealed and base64url-encoded.
MAX_TXN_BYTES = 4 * 1024 * 1024
BACKOFF_START = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0
MAX_ANSWER_BYTES = 64 * 1024

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, queue, txn, overflow record. ARGV: owner. Releases the lease only when there is
# nothing left to do (empty queue, no transaction, no overflow to report); returns 1 when there
# is, and the lease is kept.
_RELEASE_IF_IDLE = """
if redis.call('XLEN', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[3]) + redis.call('EXISTS', KEYS[4]) > 0 then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# Opens the user's transaction in one step (contract §4: one in flight, same txn_id and body on
# every retry). KEYS: lease, txn, queue, user record, ping flag, queued bytes, overflow record,
# counters.
# ARGV: owner, lease ms, hold cutoff ms, max events, a new txn_id, optionally a sealed
# `gateway.expired` event with the count it reports, now ms, the largest body in bytes
# (MAX_TXN_BYTES), optionally a sealed `gateway.overflow` event with the count it reports, the
# queue's caps (events, bytes).
# Fences first: only the lease holder gets anything, and its lease is extended past the attempt.
# The attempt about to be made answers every ping made before it, so their flag goes: a ping
# counts for the next retry only when it arrives while this attempt is in flight.
# Returns {kind, trimmed, ...}:
#   {0, 0}                    lease lost: stop;
#   {1, trimmed, txn_id, body, count, first_ms, channels, url, secret, old secret, old until}:
#                             the transaction to send (the one in flight, or a new one);
#   {2, trimmed}              nothing to send;
#   {3, trimmed, expired}     events passed the hold TTL: seal a `gateway.expired` event with
#                             `expired` and call again with it (the count is kept in the txn key
#                             meanwhile, so a crash here loses no count);
#   {4, trimmed, dropped, first_ms, last_ms}
#                             events were dropped at a cap and the queue has room again: seal a
#                             `gateway.overflow` event and call again with it; it is queued after
#                             the events kept (contract §9.2).
_OPEN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[5])
local function size(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then return #fields[j + 1] end
  end
  return 0
end
local function release(n)
  if n > 0 and redis.call('DECRBY', KEYS[6], n) < 0 then redis.call('DEL', KEYS[6]) end
end
local cutoff = ARGV[3]
local user = redis.call('HMGET', KEYS[4], 'server_url', 'secret', 'old_secret', 'old_until')
local function target(reply)
  for i = 1, 4 do reply[#reply + 1] = user[i] or '' end
  return reply
end
local txn = redis.call('HMGET', KEYS[2], 'txn_id', 'body', 'count', 'first_ms', 'channels', 'expired', 'pending')
local expired = tonumber(txn[7] or '0')
if txn[1] then
  if tonumber(txn[4]) >= tonumber(cutoff) then
    return target({1, 0, txn[1], txn[2], txn[3], txn[4], txn[5]})
  end
  -- The transaction itself passed the hold TTL: what it reported as expired is carried over,
  -- and its surviving events are sent again in a new transaction.
  expired = expired + tonumber(txn[6] or '0')
  redis.call('DEL', KEYS[2])
end
local gone = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '(' .. cutoff .. '-0')) do
  gone = gone + size(entry[2])
end
local trimmed = redis.call('XTRIM', KEYS[3], 'MINID', cutoff .. '-0')
release(gone)
expired = expired + trimmed
local prefix = ARGV[6]
if expired > 0 and tonumber(ARGV[7]) ~= expired then
  redis.call('HSET', KEYS[2], 'pending', expired)
  return {3, trimmed, expired}
end
local over = redis.call('HMGET', KEYS[7], 'dropped', 'first_ms', 'last_ms')
if over[1] and redis.call('XLEN', KEYS[3]) < tonumber(ARGV[12])
    and tonumber(redis.call('GET', KEYS[6]) or '0') < tonumber(ARGV[13]) then
  if ARGV[11] ~= over[1] then
    if expired > 0 then redis.call('HSET', KEYS[2], 'pending', expired) end
    return {4, trimmed, over[1], over[2], over[3]}
  end
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[10], 'c', 'gateway')
  redis.call('INCRBY', KEYS[6], #ARGV[10])
  -- Counted like a hand-over: on Redis 6.2 the key history counts held events by events_in.
  redis.call('HINCRBY', KEYS[8], 'events_in', 1)
  redis.call('DEL', KEYS[7])
end
local limit = tonumber(ARGV[4])
if expired > 0 then limit = limit - 1 end
local entries = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', limit)
if #entries == 0 and expired == 0 then return {2, trimmed} end
local events, channels, held = {}, {}, 0
-- Room for the events' bytes: the body's own framing and the txn_id are outside it.
local room, used, last = tonumber(ARGV[9]) - 64 - #ARGV[5], 0, nil
if expired > 0 then
  events[1] = prefix
  channels['gateway'] = 1
  used = #prefix + 1
end
for _, entry in ipairs(entries) do
  local fields, event, channel = entry[2], nil, 'unknown'
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then event = fields[j + 1] elseif fields[j] == 'c' then channel = fields[j + 1] end
  end
  -- The first event always goes; the others only while the body stays within its limit.
  if #events > 0 and used + #event + 1 > room then break end
  used = used + #event + 1
  events[#events + 1] = event
  channels[channel] = (channels[channel] or 0) + 1
  last = entry
  held = held + #event
end
local first_ms, trim_to = ARGV[8], ''
if last then
  first_ms = string.match(entries[1][1], '^(%d+)')
  local ms, seq = string.match(last[1], '^(%d+)-(%d+)$')
  trim_to = ms .. '-' .. (tonumber(seq) + 1)
end
local body = '{"txn_id":"' .. ARGV[5] .. '","events":[' .. table.concat(events, ',') .. ']}'
local counted = cjson.encode(channels)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'txn_id', ARGV[5], 'body', body, 'trim_to', trim_to, 'count', #events,
  'first_ms', first_ms, 'expired', expired, 'attempts', 0, 'channels', counted, 'bytes', held)
return target({1, trimmed, ARGV[5], body, tostring(#events), first_ms, counted})
"""
# KEYS: txn, queue, counters, queued bytes, overflow record. ARGV: txn_id, now. Deletes the
# acknowledged entries and the txn; returns {acknowledged count (-1: not the txn in flight), work
# left (events still queued, plus one for a pending overflow report)}.
_ACK = """
if redis.call('HGET', KEYS[1], 'txn_id') ~= ARGV[1] then
  return {-1, redis.call('XLEN', KEYS[2]) + redis.call('EXISTS', KEYS[5])}
end
local trim = redis.call('HGET', KEYS[1], 'trim_to')
if trim and trim ~= '' then redis.call('XTRIM', KEYS[2], 'MINID', trim) end
local n = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
local held = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[3], 'events_out', n)
redis.call('HSET', KEYS[3], 'last_ok_at', ARGV[2])
local left = redis.call('XLEN', KEYS[2])
-- An empty queue holds no bytes: this also heals a count left by a transaction opened before
-- the count existed.
if left == 0 or redis.call('DECRBY', KEYS[4], held) < 0 then redis.call('DEL', KEYS[4]) end
return {n, left + redis.call('EXISTS', KEYS[5])}
"""


def _payload(body: bytes) -> bytes | io.BytesIO:
    # aiohttp writes a bytes body of over 1 MiB in one go (and warns); a stream goes in chunks.
    return io.BytesIO(body) if len(body) > 1 << 20 else body


def backoff(attempts: int) -> float:
    """Delay before retry number `attempts` (1 = first retry): 1 s doubling, cap 5 min, ±20 %."""
    base = min(BACKOFF_CAP, BACKOFF_START * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.8, 1.2))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    if seconds != seconds:  # NaN
        return None
    return float(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds)))


@dataclass(frozen=True, slots=True)
class Opened:
    """A transaction ready to send, with where to send it (None: the user has no server now)."""

    txn_id: str
    body: bytes
    first_ms: int
    channels: dict[str, int]
    target: Target | None


class _LeaseLost(Exception):
    """The lease is no longer this worker's: another one serves the user now."""


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None
    retry_after: float | None = None


class DeliveryWorker:
    """Runs while the process runs; `wake()` makes it look at the due set at once."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        session: aiohttp.ClientSession,
        *,
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
        self._registry = registry
        self._session = session
        self._hold_ttl = hold_ttl
        # An attempt never outlives half the lease, so a takeover cannot overlap with it.
        self._timeout = aiohttp.ClientTimeout(total=min(timeout, lease / 2))
        self._lease_ms = int(lease * 1000)
        self._sweep_every = sweep
        self._next_sweep = 0.0
        self._production = production
        self._caps = caps
        self._concurrency = concurrency
        self._poll = poll
        self._owner = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._active: dict[str, asyncio.Task[None]] = {}
        self._skip_until: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._closed = False
        self._release = redis.register_script(_RELEASE)
        self._release_if_idle = redis.register_script(_RELEASE_IF_IDLE)
        self._open = redis.register_script(_OPEN)
        self._ack = redis.register_script(_ACK)
        self._batch = batching.shared(redis)
        self._outages = outages
        """Told of failures and expiries, so the people writing to a down server hear of it."""

    def wake(self, _user_id: str | None = None) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        if self._closed:
            raise ClosedError("delivery worker is closed")
        listener = asyncio.create_task(self._listen(), name="delivery-wake-listener")
        me = asyncio.current_task()
        try:
            # A library that swallows a CancelledError still leaves `cancelling()` raised: stop then too.
            while not self._closed and not (me is not None and me.cancelling()):
                self._wakeup.clear()
                try:
                    await self._maybe_sweep()
                    delay = await self._tick()
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
                        self._wakeup.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("wake listener failed; restarting it")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

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

    async def _tick(self) -> float:
        now = time.time()
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
        # Every due user is claimed in one round trip, not one after another: under load a serial
        # claim loop, not the CPU, bounded how many users could start a delivery per second.
        pipe = self._redis.pipeline(transaction=False)
        for user_id in candidates:
            pipe.set(self._keys.lease(user_id), self._owner, nx=True, px=self._lease_ms)
        claimed: list[str] = []
        for user_id, ok in zip(candidates, await pipe.execute() if candidates else [], strict=True):
            if ok:
                self._skip_until.pop(user_id, None)
                claimed.append(user_id)
            else:
                # Another worker owns it; look again when its lease could have lapsed.
                self._skip_until[user_id] = now + min(self._lease_ms / 1000, 1.0)
        if claimed:
            await self._redis.zadd(self._keys.due, dict.fromkeys(claimed, now + self._lease_ms / 1000), xx=True)
        for user_id in claimed:
            task = asyncio.create_task(self._serve(user_id), name=f"deliver-{user_id}")
            self._active[user_id] = task
            task.add_done_callback(functools.partial(self._finished, user_id))
        if len(self._skip_until) > 10_000:
            self._skip_until = {u: t for u, t in self._skip_until.items() if t > now}
        # Users due now but not claimed (served here already, or leased elsewhere) are looked at
        # again when their delivery finishes (`_finished` wakes the loop) or within one poll.
        if len(due) >= limit and claimed:
            return 0.0  # more may be due than this round read
        if not upcoming:
            return self._poll
        return max(0.0, min(self._poll, float(upcoming[0][1]) - time.time()))

    def _finished(self, user_id: str, _task: asyncio.Task[None]) -> None:
        self._active.pop(user_id, None)
        self._wakeup.set()

    async def _serve(self, user_id: str) -> None:
        """Deliver this user's queue while we hold the lease; on failure, schedule the retry."""
        released = False
        try:
            queued = True
            while not self._closed:
                # After an acknowledgement that left the queue empty there is nothing to open.
                opened = await self._open_txn(user_id) if queued else None
                if opened is None:
                    # Out of `due` first, then the last look: an event queued after that look
                    # put the user back into `due` itself (its ZADD NX found no entry).
                    # Both in one round trip, in this order.
                    _, busy = await self._batch.run(
                        batching.command(lambda p: p.zrem(self._keys.due, user_id)),
                        batching.script(
                            self._release_if_idle,
                            [
                                self._keys.lease(user_id),
                                self._keys.queue(user_id),
                                self._keys.txn(user_id),
                                self._keys.overflow(user_id),
                            ],
                            [self._owner],
                        ),
                    )
                    if not busy:
                        released = True
                        return
                    await self._redis.zadd(self._keys.due, {user_id: time.time() + self._lease_ms / 1000})
                    queued = True
                    continue
                outcome = await self._send(user_id, opened)
                if outcome.ok:
                    queued = await self._acknowledge(user_id, opened) > 0
                else:
                    if self._outages is not None:
                        await self._outages.failed(user_id)
                    await self._schedule_retry(user_id, outcome)
                    return
        except _LeaseLost:
            return
        except (RedisError, GatewayError, OSError) as exc:
            log.warning("delivery failed locally; will retry", extra={"error": type(exc).__name__})
            with contextlib.suppress(RedisError):
                await self._redis.zadd(self._keys.due, {user_id: time.time() + 1.0})
        except Exception:
            log.exception("unexpected delivery error; will retry")
            with contextlib.suppress(RedisError):
                await self._redis.zadd(self._keys.due, {user_id: time.time() + 5.0})
        finally:
            if not released:
                with contextlib.suppress(RedisError, OSError):
                    done = await self._release(keys=[self._keys.lease(user_id)], args=[self._owner])
                    if done and self._closed:
                        # A clean stop interrupted this user: let another process take over now,
                        # not when the placeholder due time set at lease time comes round.
                        await self._redis.zadd(self._keys.due, {user_id: time.time()}, xx=True)

    async def _open_txn(self, user_id: str) -> Opened | None:
        """The transaction to send now (the one in flight or a new one from the head of the
        queue), None when there is nothing to send; `_LeaseLost` when the lease is not ours."""
        keys = [
            self._keys.lease(user_id),
            self._keys.txn(user_id),
            self._keys.queue(user_id),
            self._keys.user(user_id),
            self._keys.user_key(user_id, "ping"),
            self._keys.queue_bytes(user_id),
            self._keys.overflow(user_id),
            self._keys.counters(user_id),
        ]
        prefix: tuple[bytes, int] = (b"", 0)
        overflow: tuple[bytes, str] = (b"", "")
        for _ in range(5):
            now_ms = int(time.time() * 1000)
            cutoff_ms = now_ms - int(self._hold_ttl * 1000)
            caps = self._caps
            args = [self._owner, self._lease_ms, cutoff_ms, MAX_BATCH, new_id("txn"), *prefix, now_ms, MAX_TXN_BYTES]
            args += [*overflow, caps.events, caps.bytes]
            reply = await self._batch.call(batching.script(self._open, keys, args))
            if int(reply[1]):
                metrics.EVENTS_EXPIRED.inc(int(reply[1]))
                if self._outages is not None:
                    await self._outages.expired(user_id, int(reply[1]), cutoff_ms)
            kind = int(reply[0])
            if kind == 0:
                raise _LeaseLost
            if kind == 2:
                return None
            if kind == 3:
                count = int(reply[2])
                prefix = (await self._gateway_event(user_id, "gateway.expired", {"count": count}), count)
                continue
            if kind == 4:
                dropped, first_ms, last_ms = (int(v) for v in reply[2:5])
                report = {
                    "dropped": dropped,
                    "first_dropped_at": iso(first_ms / 1000),
                    "last_dropped_at": iso(last_ms / 1000),
                }
                overflow = (await self._gateway_event(user_id, "gateway.overflow", report), str(dropped))
                continue
            txn_id, body, _count, first_ms, channels = reply[2:7]
            return Opened(
                txn_id.decode(),
                body,
                int(first_ms),
                orjson.loads(channels) if channels else {},
                await self._registry.target_from(user_id, [v or None for v in reply[7:11]]),
            )
        raise GatewayError("events kept expiring while a transaction was opened")

    async def _gateway_event(self, user_id: str, kind: str, payload: dict[str, Any]) -> bytes:
        """A gateway's own event for the user's server, sealed like every other."""
        event_id = new_id("evt")
        key = await self._registry.public_key(user_id)
        sealed = SealedEvent(event_id, kind, "gateway", iso_now(), seal(key, user_id, event_id, payload), key.kid)
        return orjson.dumps(sealed.as_json())

    async def _send(self, user_id: str, txn: Opened) -> Outcome:
        target = txn.target
        if target is None:
            return Outcome(False, None)
        if self._closed:
            raise ClosedError("delivery worker is closed")
        if self._production:
            # Names are checked when they resolve (PublicOnlyResolver); IP literals and the
            # scheme never reach a resolver, so they are checked here, at every attempt.
            try:
                validate_server_url(target.server_url, production=True)
            except ApiError:
                metrics.DELIVERIES.labels("refused_url").inc()
                log.warning("delivery refused: server_url is not allowed in production")
                return Outcome(False, None)
        txn_id = txn.txn_id
        body = txn.body.decode()
        headers = signing.headers(target.secrets[0], txn_id, body)
        if len(target.secrets) > 1:
            extra = [signing.headers(s, txn_id, body)["webhook-signature"] for s in target.secrets[1:]]
            headers["webhook-signature"] = " ".join([headers["webhook-signature"], *extra])
        headers["content-type"] = "application/json"
        url = f"{target.server_url}/ally/v1/transactions/{txn_id}"
        started = time.monotonic()
        try:
            async with self._session.put(
                url, data=_payload(txn.body), headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                # The answer is not used; a hostile server must not make us buffer it all.
                await resp.content.read(MAX_ANSWER_BYTES)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.DELIVERIES.labels("unreachable").inc()
            log.info(
                "delivery attempt failed",
                extra={
                    "txn_id": txn_id,
                    "error": type(exc).__name__,
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                },
            )
            return Outcome(False, None)
        if 200 <= status < 300:
            metrics.DELIVERIES.labels("acknowledged").inc()
            return Outcome(True, status)
        metrics.DELIVERIES.labels("refused").inc()
        log.info("delivery refused", extra={"txn_id": txn_id, "status": status})
        return Outcome(False, status, retry_after)

    async def _acknowledge(self, user_id: str, txn: Opened) -> int:
        """Drop the acknowledged events; return how much is left to do (0: nothing)."""
        keys = [
            self._keys.txn(user_id),
            self._keys.queue(user_id),
            self._keys.counters(user_id),
            self._keys.queue_bytes(user_id),
            self._keys.overflow(user_id),
        ]
        n, queued = await self._batch.call(
            batching.script(self._ack, keys, [txn.txn_id, repr(time.time())], durable=True)
        )
        n = int(n)
        if n > 0:
            # Counted by channel when the transaction was built (a txn from before that: "unknown").
            for channel, count in (txn.channels or {"unknown": n}).items():
                metrics.EVENTS_OUT.labels(channel).inc(count)
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - txn.first_ms / 1000))
        return int(queued)

    async def _schedule_retry(self, user_id: str, outcome: Outcome) -> None:
        attempts = int(await self._redis.hincrby(self._keys.txn(user_id), "attempts", 1))
        reason = f"http_{outcome.status}" if outcome.status is not None else "unreachable"
        await self._redis.hset(
            self._keys.counters(user_id), mapping={"last_failure_at": repr(time.time()), "last_failure": reason}
        )
        metrics.DELIVERY_RETRIES.labels(
            "unreachable" if outcome.status is None else "retry_after" if outcome.retry_after is not None else "refused"
        ).inc()
        delay = outcome.retry_after if outcome.retry_after is not None else backoff(attempts)
        await self._redis.zadd(self._keys.due, {user_id: time.time() + delay})
        # Read the ping flag only after writing the retry time: a ping that set its flag before
        # this read is seen here, and one that sets it later writes `due` after us. Either way
        # the ping wins, whichever order the two processes ran in.
        if await self._redis.getdel(self._keys.user_key(user_id, "ping")):
            await self._redis.zadd(self._keys.due, {user_id: time.time()})

    async def aclose(self) -> None:
        self._closed = True
        self._wakeup.set()
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
