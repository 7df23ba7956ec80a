"""The transaction store: each user's one transaction in flight (contract §4), kept in the
`{u:<id>}:txn` hash so that every retry sends the same txn_id and the same body. This module is
the only one that knows that hash's fields; the scripts below build a transaction from the
head of the queue and drop its events once the server acknowledged them.

Every call is fenced by the worker's lease: only the lease holder gets a transaction, and its
lease is extended past the attempt in the same atomic step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from foundation import batching, metrics, user_fields
from foundation.clock import iso, iso_now
from foundation.errors import GatewayError
from foundation.redis_keys import Keys
from foundation.types import SealedEvent
from routing.handoff import DEFAULT_CAPS, Caps, new_id
from routing.leases import LEASE_FUNCTIONS
from routing.outage import Outages
from routing.registry import Registry, Target
from routing.sealing import seal

MAX_BATCH = 100
# The largest transaction body a server must accept (docs/delivery.md). One event alone is far
# smaller: ingress bodies are at most 1 MiB, about 1.4 MB once sealed and base64url-encoded.
MAX_TXN_BYTES = 4 * 1024 * 1024

# Opens the user's transaction in one step (contract §4: one in flight, same txn_id and body on
# every retry). KEYS: lease, txn, queue, user record, ping flag, queued bytes, overflow record,
# counters.
# ARGV: owner, lease ms, hold cutoff ms, max events, a new txn_id, optionally a sealed
# `gateway.expired` event with the count it reports, now ms, the largest body in bytes
# (MAX_TXN_BYTES), optionally a sealed `gateway.overflow` event with the count it reports, the
# queue's caps (events, bytes), '1' to take the lease when it is free (a claim), '2' to take it
# only when no transaction is in flight either (a fresh claim, made in the hand-over's round trip:
# a transaction awaiting its retry waits for its time in `due`).
# Fences first: only the lease holder gets anything, and its lease is extended past the attempt.
# The attempt about to be made answers every ping made before it, so their flag goes: a ping
# counts for the next retry only when it arrives while this attempt is in flight.
# Returns {kind, trimmed, ...}:
#   {0, 0}                    lease lost: stop;
#   {5, 0}                    a fresh claim declined: a transaction awaits its retry;
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
_OPEN = user_fields.lua(
    LEASE_FUNCTIONS
    + """
local take = ARGV[14]
if take == '2' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {5, 0} end
  take = '1'
end
if not lease_hold(KEYS[1], ARGV[1], ARGV[2], take) then return {0, 0} end
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
local user = redis.call('HMGET', KEYS[4], @server_url, @secret, @old_secret, @old_until)
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
)
# KEYS: txn, queue, counters, queued bytes, overflow record, lease. ARGV: txn_id, now, owner.
# Deletes the acknowledged entries and the txn, and gives the lease up when nothing is left to do
# (the caller left `due` just before, in the same round trip: see `Leases.release_if_idle`).
# Returns {acknowledged count (-1: not the txn in flight), work left (events still queued, plus
# one for a pending overflow report), 1 when the lease was given up}.
_ACK = (
    LEASE_FUNCTIONS
    + """
if redis.call('HGET', KEYS[1], 'txn_id') ~= ARGV[1] then
  return {-1, redis.call('XLEN', KEYS[2]) + redis.call('EXISTS', KEYS[5]), 0}
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
left = left + redis.call('EXISTS', KEYS[5])
if left > 0 then return {n, left, 0} end
lease_release(KEYS[6], ARGV[3])
return {n, 0, 1}
"""
)


@dataclass(frozen=True, slots=True)
class Opened:
    """A transaction ready to send, with where to send it (None: the user has no server now)."""

    txn_id: str
    body: bytes
    count: int
    """Events in the transaction."""
    first_ms: int
    channels: dict[str, int]
    target: Target | None


class LeaseLost(Exception):
    """The lease is no longer this worker's: another one serves the user now."""


class Declined(LeaseLost):
    """A fresh claim found a transaction awaiting its retry: `due` holds the user until then."""


@dataclass(frozen=True, slots=True)
class FreshOpen:
    """A first open that goes out in another caller's round trip (the hand-over's): `rider` is
    sent there, `Transactions.open(first=...)` reads its reply."""

    rider: batching.Rider
    cutoff_ms: int


@dataclass(frozen=True, slots=True)
class _OpenReply:
    """The open script's answer, by name (see its comment for the kinds)."""

    kind: int
    trimmed: int
    rest: list[Any]

    LEASE_LOST, TO_SEND, NOTHING, EXPIRED, OVERFLOWED, DECLINED = 0, 1, 2, 3, 4, 5

    @classmethod
    def parse(cls, reply: list[Any]) -> _OpenReply:
        return cls(int(reply[0]), int(reply[1]), list(reply[2:]))


@dataclass(frozen=True, slots=True)
class Acknowledged:
    count: int
    """Events acknowledged; -1 when the transaction was not the one in flight."""
    left: int
    """Work left: events still queued, plus one for a pending overflow report."""
    released: bool
    """Nothing was left, and the lease was given up."""


class Transactions:
    """Opens, acknowledges and counts the attempts of each user's transaction for one worker."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        *,
        owner: str,
        lease_ms: int,
        hold_ttl: float,
        caps: Caps = DEFAULT_CAPS,
        outages: Outages | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._owner = owner
        self._lease_ms = lease_ms
        self._hold_ttl = hold_ttl
        self._caps = caps
        self._outages = outages
        self._open = redis.register_script(_OPEN)
        self._ack = redis.register_script(_ACK)
        self._batch = batching.shared(redis)

    def fresh_open(self, user_id: str) -> FreshOpen:
        """The first open of a user nobody serves, to be sent right after the hand-over that queued
        its event, in the same round trip: it claims the lease unless a transaction is in flight
        (then `Declined`: the retry keeps its time)."""
        call, cutoff_ms = self._open_call(user_id, "2", (b"", 0), (b"", ""))
        return FreshOpen(batching.Rider(call, asyncio.get_running_loop().create_future()), cutoff_ms)

    def _open_call(
        self, user_id: str, take: str, prefix: tuple[bytes, int], overflow: tuple[bytes, str]
    ) -> tuple[batching.Call, int]:
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
        now_ms = int(time.time() * 1000)
        cutoff_ms = now_ms - int(self._hold_ttl * 1000)
        caps = self._caps
        args = [self._owner, self._lease_ms, cutoff_ms, MAX_BATCH, new_id("txn"), *prefix, now_ms, MAX_TXN_BYTES]
        args += [*overflow, caps.events, caps.bytes, take]
        return batching.script(self._open, keys, args), cutoff_ms

    async def open(
        self,
        user_id: str,
        *,
        claim: bool = False,
        before: batching.Call | None = None,
        first: FreshOpen | None = None,
    ) -> Opened | None:
        """The transaction to send now (the one in flight or a new one from the head of the
        queue), None when there is nothing to send; `LeaseLost` when the lease is not ours.
        `claim`: take the lease if it is free. `before`: a call sent first, in the same round trip.
        `first`: the first open was sent already (`fresh_open`); its reply is read from there."""
        prefix: tuple[bytes, int] = (b"", 0)
        overflow: tuple[bytes, str] = (b"", "")
        for _ in range(5):
            if first is not None:
                raw, cutoff_ms = await first.rider.reply, first.cutoff_ms
                first, claim = None, True
            else:
                call, cutoff_ms = self._open_call(user_id, "1" if claim else "0", prefix, overflow)
                if before is not None:
                    raw = (await self._batch.run(before, call))[1]
                    before = None
                else:
                    raw = await self._batch.call(call)
            reply = _OpenReply.parse(raw)
            if reply.trimmed:
                metrics.EVENTS_EXPIRED.inc(reply.trimmed)
                if self._outages is not None:
                    await self._outages.expired(user_id, reply.trimmed, cutoff_ms)
            if reply.kind == _OpenReply.DECLINED:
                raise Declined
            if reply.kind == _OpenReply.LEASE_LOST:
                raise LeaseLost
            if reply.kind == _OpenReply.NOTHING:
                return None
            if reply.kind == _OpenReply.EXPIRED:
                count = int(reply.rest[0])
                prefix = (await self._gateway_event(user_id, "gateway.expired", {"count": count}), count)
                continue
            if reply.kind == _OpenReply.OVERFLOWED:
                dropped, first_ms, last_ms = (int(v) for v in reply.rest[:3])
                report = {
                    "dropped": dropped,
                    "first_dropped_at": iso(first_ms / 1000),
                    "last_dropped_at": iso(last_ms / 1000),
                }
                overflow = (await self._gateway_event(user_id, "gateway.overflow", report), str(dropped))
                continue
            return await self._opened(user_id, reply.rest)
        raise GatewayError("events kept expiring while a transaction was opened")

    async def _opened(self, user_id: str, rest: list[Any]) -> Opened:
        txn_id, body, count, first_ms, channels, *target = rest
        return Opened(
            txn_id.decode(),
            body,
            int(count),
            int(first_ms),
            orjson.loads(channels) if channels else {},
            await self._registry.target_from(user_id, [v or None for v in target]),
        )

    async def _gateway_event(self, user_id: str, kind: str, payload: dict[str, Any]) -> bytes:
        """A gateway's own event for the user's server, sealed like every other."""
        event_id = new_id("evt")
        key = await self._registry.public_key(user_id)
        sealed = SealedEvent(event_id, kind, "gateway", iso_now(), seal(key, user_id, event_id, payload), key.kid)
        return orjson.dumps(sealed.as_json())

    async def acknowledge(self, user_id: str, txn: Opened, *, before: batching.Call | None = None) -> Acknowledged:
        """Drop the acknowledged events, and give the lease up when nothing is left to do.
        `before`: a call sent first, in the same round trip (the worker leaving `due`)."""
        keys = [
            self._keys.txn(user_id),
            self._keys.queue(user_id),
            self._keys.counters(user_id),
            self._keys.queue_bytes(user_id),
            self._keys.overflow(user_id),
            self._keys.lease(user_id),
        ]
        call = batching.script(self._ack, keys, [txn.txn_id, repr(time.time()), self._owner], durable=True)
        # The server has its events; the acknowledgement of a one-event transaction (the common
        # case of a user writing now and then) may wait a moment to share another call's round
        # trip. One that drains a backlog goes at once: the next transaction waits for it.
        lazy = txn.count == 1
        calls = (before, call) if before is not None else (call,)
        reply = (await self._batch.run(*calls, lazy=lazy))[-1]
        done = Acknowledged(int(reply[0]), int(reply[1]), bool(int(reply[2])))
        if done.count > 0:
            # Counted by channel when the transaction was built (a txn from before that: "unknown").
            for channel, count in (txn.channels or {"unknown": done.count}).items():
                metrics.child(metrics.EVENTS_OUT, channel).inc(count)
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - txn.first_ms / 1000))
        return done

    async def failed_attempt(self, user_id: str) -> int:
        """Count a failed attempt of the transaction in flight; return the attempts so far."""
        return int(await self._redis.hincrby(self._keys.txn(user_id), "attempts", 1))
