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

import msal
import orjson

from bench.common import RedisServer, Results, Row, log
from channels.telegram.chats import Chats
from foundation.config import MasterKey
from foundation.redis_keys import Keys
from foundation.storage import connect
from foundation.vault import Vault
from oauth.microsoft import stored_cache
from oauth.store import ConnectionStore, Tokens
from routing.registry import Registry

USER_TARGET = 1024.0
CONNECTION_TARGET = 2560.0
SAMPLE = 300
GOOGLE_SCOPES = (
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/calendar",
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
)
MICROSOFT_SCOPES = ("Mail.Read", "User.Read", "offline_access", "openid", "profile", "email")
MICROSOFT_CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
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

    chats = Chats(redis, keys)
    store = ConnectionStore(redis, keys, vault)

    async def register(i: int) -> None:
        uid = user_id(i)
        await registry.put(uid, f"https://{uid}.servers.ally.example", _pub(i))

    async def link(i: int) -> None:
        await chats.link(user_id(i), 5_000_000_000 + i, "private", "start")

    async def connect_google(i: int) -> None:
        # Sizes as Google issues them: ~220-character access tokens, ~103-character refresh tokens.
        tokens = Tokens(
            access_token="ya29.a0" + base64.urlsafe_b64encode(os.urandom(160)).decode().rstrip("="),
            expires_at=time.time() + 3599,
            refresh_token="1//0g" + base64.urlsafe_b64encode(os.urandom(74)).decode().rstrip("="),
            scopes=GOOGLE_SCOPES,
        )
        uid = user_id(i)
        await store.put(uid, "google", f"{uid}@gmail.com", tokens, connected_at=time.time())

    async def connect_microsoft(i: int) -> None:
        uid = user_id(i)
        tokens = microsoft_tokens(f"{uid}@outlook.com")
        await store.put(uid, "microsoft", f"{uid}@outlook.com", tokens, connected_at=time.time())

    make = {"register": register, "link": link, "google": connect_google, "microsoft": connect_microsoft}[phase]

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def microsoft_tokens(address: str) -> Tokens:
    """A Microsoft grant as the connect flow stores it: msal's cache filled by msal itself from
    a token answer shaped like the Microsoft identity platform's, with its usual sizes (a
    personal account's opaque access token ~1,480 characters, refresh token ~940, an ID token
    JWT ~1,270), cut down by the gateway's own `stored_cache`."""
    now = int(time.time())
    tenant, oid = "9188040d-6c67-4c5b-b112-36a304b66dad", "00000000-0000-0000-66f3-3332eca7ea81"
    header = _b64(orjson.dumps({"typ": "JWT", "alg": "RS256", "kid": "nOo3ZDrODXEK1jKWhXslHR_KXEg"}))
    claims = {
        "ver": "2.0",
        "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "sub": _b64(os.urandom(32)),
        "aud": MICROSOFT_CLIENT_ID,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "name": "Ally User",
        "preferred_username": address,
        "oid": oid,
        "email": address,
        "tid": tenant,
        "aio": _b64(os.urandom(90)),
    }
    id_token = f"{header}.{_b64(orjson.dumps(claims))}.{_b64(os.urandom(256))}"
    access_token = "EwB4A8l6BAAU" + _b64(os.urandom(1100))
    refresh_token = "M.C5" + _b64(os.urandom(700))
    client_info = _b64(orjson.dumps({"uid": oid.replace("-", "")[-16:], "utid": tenant}))
    cache = msal.SerializableTokenCache()
    cache.add(
        {
            "client_id": MICROSOFT_CLIENT_ID,
            "scope": list(MICROSOFT_SCOPES),
            "token_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "response": {
                "token_type": "Bearer",
                "scope": " ".join(MICROSOFT_SCOPES),
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "id_token": id_token,
                "client_info": client_info,
            },
            "params": {},
            "data": {},
        }
    )
    return Tokens(
        access_token=access_token,
        expires_at=time.time() + 3599,
        refresh_token=refresh_token,
        scopes=MICROSOFT_SCOPES,
        msal_cache=stored_cache(cache),
    )


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
    sample = [user_id(i) for i in range(0, n, max(1, n // SAMPLE))][:SAMPLE]
    used = [await used_memory(redis)]
    payloads = [0.0]
    parts: list[str] = []
    for phase in ("register", "link", "google", "microsoft"):
        seconds = await asyncio.to_thread(fill, server.url, master, n, phase)
        used.append(await used_memory(redis))
        log(f"  {phase}: {n:,} in {seconds:.0f} s, +{(used[-1] - used[-2]) / n:.0f} B each")
        found = await sample_keys(redis, keys, sample)
        payloads.append(await payload_bytes(redis, found))
        breakdown = await key_breakdown(redis, found)
        parts = [f"`{k}` {v} B" for k, v in breakdown.most_common()]
    per_user = (used[2] - used[0]) / n
    per_conn = (used[3] - used[2]) / n
    per_microsoft = (used[4] - used[3]) / n
    results.add(
        Row(
            name,
            f"bytes per user: registration + linked chat (at {n:,} users)",
            per_user,
            "B",
            payloads[2],
            "the values' own bytes",
            "≤ 1 KB",
            per_user <= USER_TARGET,
        )
    )
    results.add(
        Row(
            name,
            "of which the linked Telegram chat",
            (used[2] - used[1]) / n,
            "B",
            payloads[2] - payloads[1],
            "the values' own bytes",
        )
    )
    results.add(
        Row(
            name,
            "bytes per connected Google account (encrypted tokens)",
            per_conn,
            "B",
            payloads[3] - payloads[2],
            "the values' own bytes",
            "≤ 2.5 KB",
            per_conn <= CONNECTION_TARGET,
        )
    )
    results.add(
        Row(
            name,
            "bytes per connected Microsoft account (encrypted tokens and msal cache)",
            per_microsoft,
            "B",
            payloads[4] - payloads[3],
            "the values' own bytes",
            "≤ 2.5 KB",
            per_microsoft <= CONNECTION_TARGET,
        )
    )
    global_share = int(await redis.memory_usage(keys.users, samples=0) or 0) / n
    chat_key = int(await redis.memory_usage(keys.global_key("tg:chat:5000000000"), samples=0) or 0)
    results.note(
        name,
        f"MEMORY USAGE per user's key: {', '.join(parts)}; global: `users` set {global_share:.0f} "
        f"B/user, `tg:chat:<id>` {chat_key} B/chat; the rest of the INFO delta is the main "
        "dictionary's entries and allocator rounding",
    )
    results.note(
        name,
        "not included: the per-user dedup window of update ids (7 days, one sorted-set entry per "
        "update) and queued events, which grow with traffic, not with users",
    )
    estimate(results, name, per_user, per_conn)


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
