"""Benchmark 2 — the scale of state: Redis bytes per user and per connected account.

A dedicated redis-server (the binary the gateway embeds) is filled through the gateway's
own code (the registry, the vault, and each channel's or provider's storage as it exists)
with synthetic users, and measured with `INFO memory` (used_memory) before and after each
phase. `MEMORY USAGE` on a sample of users splits the total by key, so the dominant part
is visible. The baseline is the payload itself: the bytes of the values the gateway has to
remember, without key names, encodings or encryption overhead.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import multiprocessing
import os
import time
from collections import Counter
from typing import Any

from bench.common import RedisServer, Results, Row, log
from gateway.config import MasterKey
from gateway.storage import connect
from oauth.vault import Vault
from routing.keys import Keys
from routing.registry import Registry

USER_TARGET = 1024.0
CONNECTION_TARGET = 2560.0
SAMPLE = 300
CONCURRENCY = 64


def _pub(i: int) -> str:
    return base64.urlsafe_b64encode(i.to_bytes(4, "big") + os.urandom(28)).rstrip(b"=").decode()


async def used_memory(redis: Any) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


def fill(url: str, master: bytes, n: int, phase: str, procs: int = 2) -> float:
    """Run `phase` for users 0..n-1 through the gateway's code, in `procs` processes (the
    Redis client costs more CPU per command than Redis does); return the seconds it took."""
    began = time.monotonic()
    bounds = [(n * k // procs, n * (k + 1) // procs) for k in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        futures = [pool.submit(_fill_slice, url, master, lo, hi, phase) for lo, hi in bounds]
        for f in futures:
            f.result()
    return time.monotonic() - began


def _fill_slice(url: str, master: bytes, lo: int, hi: int, phase: str) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_fill_async(url, master, lo, hi, phase))


def user_id(i: int) -> str:
    return f"u{i:07d}"


async def _fill_async(url: str, master: bytes, lo: int, hi: int, phase: str) -> None:
    redis = connect(url)
    keys = Keys("ally:")
    vault = Vault(redis, keys, (MasterKey("bench1", master),))
    registry = Registry(redis, keys, vault)
    next_i = lo

    async def register(i: int) -> None:
        uid = user_id(i)
        await registry.put(uid, f"https://{uid}.servers.ally.example", _pub(i))

    make = {"register": register}[phase]

    async def worker() -> None:
        nonlocal next_i
        while next_i < hi:
            i = next_i
            next_i += 1
            await make(i)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await redis.aclose()


async def sample_keys(redis: Any, keys: Keys, user_ids: list[str]) -> dict[str, list[bytes]]:
    """Every key of the sampled users, found with one SCAN of the keyspace."""
    wanted = {keys.user_tag(u).encode(): u for u in user_ids}
    found: dict[str, list[bytes]] = {u: [] for u in user_ids}
    async for raw in redis.scan_iter(match=f"{keys.prefix}{{u:*", count=5000):
        tag = raw[: raw.index(b"}") + 1]
        if tag in wanted:
            found[wanted[tag]].append(raw)
    return found


async def key_breakdown(redis: Any, found: dict[str, list[bytes]]) -> Counter[str]:
    """Mean MEMORY USAGE per key kind (the part after the user's hash tag) over the sample."""
    totals: Counter[str] = Counter()
    for names in found.values():
        for raw in names:
            kind = raw[raw.index(b"}") + 2 :].decode()
            totals[kind] += int(await redis.memory_usage(raw, samples=0) or 0)
    return Counter({k: round(v / len(found)) for k, v in totals.items()})


async def run(results: Results, *, users: int) -> None:
    name = "state"
    with RedisServer() as server:
        redis = connect(server.url)
        try:
            await _run(results, name, server, redis, users)
        finally:
            await redis.aclose()


async def _run(results: Results, name: str, server: RedisServer, redis: Any, n: int) -> None:
    keys = Keys("ally:")
    master = os.urandom(32)
    await redis.set("warm", b"x")
    await redis.delete("warm")
    before = await used_memory(redis)
    seconds = await asyncio.to_thread(fill, server.url, master, n, "register")
    after_users = await used_memory(redis)
    per_user = (after_users - before) / n
    log(f"  {n} registrations in {seconds:.0f} s")
    sample = [user_id(i) for i in range(0, n, max(1, n // SAMPLE))][:SAMPLE]
    found = await sample_keys(redis, keys, sample)
    breakdown = await key_breakdown(redis, found)
    payload = await payload_bytes(redis, found)
    global_share = (int(await redis.memory_usage(keys.users, samples=0) or 0)) / n
    results.add(
        Row(
            name,
            f"bytes per registered user (at {n:,} users)",
            per_user,
            "B",
            payload,
            "payload bytes",
            "≤ 1 KB",
            per_user <= USER_TARGET,
        )
    )
    parts = ", ".join(f"`{k}` {v} B" for k, v in breakdown.most_common())
    results.note(
        name,
        f"per user, MEMORY USAGE by key: {parts}; `users` set {global_share:.0f} B/user; "
        f"the rest of the INFO delta is the main dictionary's entries and allocator rounding",
    )
    results.note(name, "linked Telegram chat: not measured yet (the Telegram channel has not landed)")
    results.note(name, "connected accounts: not measured yet (the OAuth connections have not landed)")
    estimate(results, name, per_user, None)


async def payload_bytes(redis: Any, found: dict[str, list[bytes]]) -> float:
    """What the gateway must remember per user, as bytes of the values alone."""
    total = 0
    for names in found.values():
        for raw in names:
            kind = await redis.type(raw)
            if kind == b"hash":
                total += sum(len(v) for v in (await redis.hgetall(raw)).values())
            elif kind == b"string":
                total += len(await redis.get(raw) or b"")
    return total / len(found)


def estimate(results: Results, name: str, per_user: float, per_connection: float | None) -> None:
    """Paper estimate: memory at 1 M and 10 M users, with the usual 2 connections per user."""
    conn = per_connection or 0.0
    for users in (1_000_000, 10_000_000):
        total = users * (per_user + 2 * conn)
        results.note(
            name,
            f"estimate at {users:,} users: {total / 2**30:.1f} GiB of data "
            f"({'with' if conn else 'without'} 2 connections each)",
        )
