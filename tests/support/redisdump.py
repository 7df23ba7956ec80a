"""Read every key under a prefix with every value it holds, whatever its type, as raw bytes."""

from __future__ import annotations

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
