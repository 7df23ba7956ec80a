"""Read every key under a prefix with every value it holds, whatever its type, as raw bytes."""

from __future__ import annotations

import base64
from typing import Any

from redis.asyncio import Redis


async def dump(redis: Redis, prefix: str) -> dict[bytes, list[bytes]]:
    """{key: [every member, field, value, score and stream entry field of it]}."""
    out: dict[bytes, list[bytes]] = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await redis.type(key)).decode()
        parts: list[bytes] = []
        if kind == "string":
            parts.append(await redis.get(key) or b"")
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                parts += [field, value]
        elif kind == "set":
            parts += list(await redis.smembers(key))
        elif kind == "zset":
            for member, score in await redis.zrange(key, 0, -1, withscores=True):
                parts += [member, repr(score).encode()]
        elif kind == "list":
            parts += list(await redis.lrange(key, 0, -1))
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key, "-", "+"):
                parts.append(entry_id)
                for field, value in fields.items():
                    parts += [field, value]
        elif kind == "none":
            continue  # expired between SCAN and TYPE
        else:
            raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
        out[key] = parts
    return out


def containing(snapshot: dict[bytes, list[bytes]], needle: bytes) -> list[bytes]:
    """Keys whose name or any value contains `needle`."""
    return [key for key, parts in snapshot.items() if needle in key or any(needle in p for p in parts)]


async def everything_under(redis: Any, prefix: str) -> list[bytes]:
    """Every key name and every stored value (each field, member, score and stream entry)."""
    out: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=500):
        out.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value = await redis.get(key)
            if value is not None:  # a lease or flag may expire between TYPE and GET
                out.append(value)
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                out += [field, value]
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                out.append(entry_id)
                for field, value in fields.items():
                    out += [field, value]
        elif kind == "zset":
            for member, score in await redis.zrange(key, 0, -1, withscores=True):
                out += [member, repr(score).encode()]
        elif kind == "set":
            out += list(await redis.smembers(key))
        elif kind == "list":
            out += list(await redis.lrange(key, 0, -1))
        elif kind == "none":
            continue  # expired or deleted between SCAN and TYPE (a lease, a ping flag)
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return out


def forms(marker: str) -> list[bytes]:
    raw = marker.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="), raw.hex().encode()]
