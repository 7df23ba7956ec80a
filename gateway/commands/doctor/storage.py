"""Redis (answers? durable? never evicts?) and the key ring (does every data key open?)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from foundation import user_fields
from foundation.config import Settings
from foundation.embedded import EmbeddedRedis
from foundation.redis_keys import Keys
from foundation.vault import aad
from gateway.commands.doctor.report import Report

TIMEOUT = 5.0


def shown_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _per_node(reply: Any) -> list[dict[str, Any]]:
    """INFO from one node is a dict of fields; from a cluster client, a dict of such dicts by node."""
    if reply and all(isinstance(v, dict) for v in reply.values()):
        return list(reply.values())
    return [reply]


async def check_redis(redis: Redis, where: str, report: Report) -> bool:
    """Report on Redis; False when it does not answer (nothing else can be checked then)."""
    try:
        await asyncio.wait_for(redis.ping(), TIMEOUT)
        servers = _per_node(await redis.info("server"))
        persistence = _per_node(await redis.info("persistence"))
        memory = _per_node(await redis.info("memory"))
    except (RedisError, OSError, TimeoutError) as exc:
        report.fail("redis", f"{where} does not answer: {type(exc).__name__}")
        return False
    versions = sorted({str(s.get("redis_version")) for s in servers})
    report.ok(
        "redis", f"Redis {', '.join(versions)} at {where}" + (f" ({len(servers)} nodes)" if len(servers) > 1 else "")
    )
    appendonly = await _config(redis, "appendonly")
    snapshots = await _config(redis, "save")
    for info in persistence:
        aof = appendonly == "yes" if appendonly is not None else bool(info.get("aof_enabled"))
        if not aof:
            rdb = bool(snapshots)
            text = "AOF is off (appendonly no): events acknowledged to providers can be lost when Redis restarts"
            report.fail("redis", text + ("; RDB snapshots alone lose the minutes since the last one" if rdb else ""))
        elif str(info.get("aof_last_write_status", "ok")) != "ok":
            report.fail("redis", f"AOF writes are failing (aof_last_write_status {info.get('aof_last_write_status')})")
        else:
            fsync = await _config(redis, "appendfsync")
            report.ok("redis", "AOF persistence on" + (f" (appendfsync {fsync})" if fsync else ""))
    for info in memory:
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if int(info.get("maxmemory", 0) or 0) and policy != "noeviction":
            report.fail("redis", f"maxmemory-policy {policy}: Redis may evict queued events; use noeviction")
    return True


async def _config(redis: Redis, name: str) -> str | None:
    """CONFIG GET, or None where the host disables CONFIG (managed Redis); INFO answers then."""
    try:
        reply = await redis.config_get(name)
    except ResponseError:
        return None
    value = reply.get(name) if isinstance(reply, dict) else None
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value is not None else None


async def _wrapped_keys(redis: Redis, keys: Keys) -> AsyncIterator[tuple[str, bytes]]:
    """(user id, wrapped data key) for every data key stored: the field `dek` of each user record,
    and the keys of their own that older versions stored (until a read or `keys rotate` moves them)."""
    for kind in ("user", "dek"):
        async for key in redis.scan_iter(match=f"{keys.prefix}{{u:*}}:{kind}", count=1000):
            user_id = key.decode().split("{u:", 1)[1].rsplit("}:" + kind, 1)[0]
            stored = await (redis.hget(key, user_fields.DEK) if kind == "user" else redis.get(key))
            if stored is not None:  # erased meanwhile, or a record without a key yet
                yield user_id, bytes(stored)


async def check_key_ring(redis: Redis, settings: Settings, report: Report) -> None:
    """Every data key must be wrapped by a kid in the ring, and open under it."""
    keys = Keys(settings.key_prefix)
    ring = {k.kid: AESGCM(k.key) for k in settings.master_keys}
    active = settings.master_keys[0].kid if settings.master_keys else None
    by_kid: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    broken = 0
    async for user_id, stored in _wrapped_keys(redis, keys):
        kid, _, blob = stored.partition(b".")
        name = kid.decode(errors="replace")
        master = ring.get(name)
        if master is None:
            unknown[name] += 1
            continue
        try:
            master.decrypt(blob[:12], blob[12:], aad(user_id, "dek"))
        except (InvalidTag, ValueError):
            broken += 1
            continue
        by_kid[name] += 1
    total = sum(by_kid.values()) + sum(unknown.values()) + broken
    if unknown:
        listed = ", ".join(f"{kid} ({n})" for kid, n in sorted(unknown.items()))
        report.fail("key ring", f"data keys wrapped by kids missing from ALLY_MASTER_KEYS: {listed}")
    if broken:
        report.fail("key ring", f"{broken} data key(s) do not open under their kid (a kid reused for another key?)")
    stale = sum(n for kid, n in by_kid.items() if kid != active)
    if stale:
        report.warn(
            "key ring", f"{stale} data key(s) not yet under the active kid {active}: run `ally-gateway keys rotate`"
        )
    if not unknown and not broken:
        report.ok("key ring", f"{total} data key(s), all open under the ring (active kid {active})")


async def check_queues(redis: Redis, settings: Settings, report: Report) -> None:
    keys = Keys(settings.key_prefix)
    users = int(await redis.scard(keys.users))
    due = int(await redis.zcard(keys.due))
    erasing = await redis.hgetall(keys.global_key("erasures"))
    report.info("queues", f"{users} user(s), {due} with events waiting or in flight")
    if erasing:
        report.warn("erasure", f"{len(erasing)} erasure(s) in progress; a running worker finishes them")


def redis_target(settings: Settings) -> str:
    """ALLY_REDIS_URL, or the embedded Redis's socket (the doctor never starts one)."""
    return settings.redis_url or EmbeddedRedis(settings.data_dir).url
