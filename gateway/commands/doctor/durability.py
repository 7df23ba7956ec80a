"""What a crash can lose: replicas behind acknowledged writes (ALLY_ACK_REPLICAS), and whether
erased users have been compacted out of the AOF (foundation.compaction)."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from foundation.config import Settings
from foundation.redis_keys import Keys
from foundation.replication import shards
from gateway.commands.doctor.report import Report


async def check_replicas(redis: Redis, settings: Settings, report: Report) -> None:
    found = await shards(redis)
    seen = any(shard.replicas for shard in found)
    wanted = settings.ack_replicas if settings.ack_replicas is not None else int(seen)
    source = "ALLY_ACK_REPLICAS" if settings.ack_replicas is not None else "ALLY_ACK_REPLICAS unset, replicas found"
    lacking = [shard for shard in found if shard.replicas < wanted]
    for shard in lacking:
        report.fail(
            "replication",
            f"acknowledged writes wait for {wanted} replica(s) ({source}) but primary {shard.primary} has "
            f"{shard.replicas} in sync: its writes answer 503 until a replica is attached (or set "
            "ALLY_ACK_REPLICAS=0 and accept that a failover can lose the last acknowledged writes)",
        )
    if wanted and not lacking:
        report.ok("replication", f"acknowledged writes wait for {wanted} replica(s) ({source}); every primary has them")
    elif not wanted:
        report.info(
            "replication",
            "no replica: acknowledged writes live on one node; its AOF (appendfsync) decides what a crash "
            "of that machine can lose",
        )


async def check_compaction(redis: Redis, settings: Settings, report: Report) -> None:
    status = await redis.hgetall(Keys(settings.key_prefix).global_key("aof"))
    pending = int(status.get(b"pending", 0) or 0)
    outcome = status.get(b"last_outcome", b"").decode()
    if outcome == "refused":
        report.warn(
            "erasure",
            "this Redis refuses BGREWRITEAOF: erased users stay in its AOF history until it rewrites the "
            "file itself (ask the host, or run BGREWRITEAOF where allowed)",
        )
    elif outcome:
        ago = int(time.time() - float(status.get(b"last_at", b"0")))
        report.ok("erasure", f"AOF compacted after erasures {ago} s ago ({outcome})")
    if pending > 0:
        report.info(
            "erasure",
            f"{pending} finished erasure(s) wait for the next AOF rewrite "
            f"(at most every {int(settings.aof_rewrite_interval)} s, ALLY_AOF_REWRITE_INTERVAL)",
        )
