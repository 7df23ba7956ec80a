"""How many replicas must hold an acknowledged write (contract §9.9), and which shards lack them.

Redis replicates asynchronously: a primary that dies takes with it the writes its replicas had
not received yet. So a write the gateway acknowledges as stored (an event handed over, a link
code redeemed, tokens stored, an erasure accepted, a delivered transaction dropped) waits for
`ALLY_ACK_REPLICAS` replicas with Redis `WAIT` (sent by `foundation.batching`, once per flush).

Unset, `ALLY_ACK_REPLICAS` means 1 as soon as the Redis in use has been seen with a replica, and
it stays 1 for the life of the process: a replica that drops out is exactly when waiting for it
matters (writes then answer 503 until it is back, or the operator sets 0).

On a cluster, unset, it is decided per shard: 1 while the shard's primary has a replica *listed*
in the cluster's view — in sync, lagging, cut off or failing alike, so a replica that falls
behind still makes writes wait for it (or 503) — and 0 for a primary with no replica listed at
all. That is the shard right after a failover: its old primary is gone, nobody can confirm a
write, and refusing every write until an operator restarts a node would take that shard's users
offline for no gain. It serves unreplicated meanwhile (a second failure before a replica rejoins
would lose what it took); `/readyz` names it, the log says so once. An explicit
`ALLY_ACK_REPLICAS` is strict everywhere: a shard without enough replicas refuses writes.

The topology is read at start-up and again every `REFRESH` seconds (failovers, replicas added),
by `watch` alone: `/readyz` reports the last reading (`read_at` says when it was taken), so a
probe costs one PING however often a load balancer asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from foundation import batching
from foundation.config import Settings

log = logging.getLogger(__name__)

REFRESH = 5.0
UNREAD_RETRY = 0.5
"""Seconds between attempts while the topology has never been read (Redis was down at start)."""


@dataclass(frozen=True, slots=True)
class Shard:
    primary: str
    """The primary's address (`host:port`), or `redis` for a single primary."""
    replicas: int
    """Replicas attached and in sync (online) right now."""
    listed: int = 0
    """Replicas the cluster lists for this primary, failing or not (a single primary: `replicas`)."""


async def shards(redis: Redis) -> list[Shard]:
    """Each primary of the Redis in use with the replicas it has now."""
    if isinstance(redis, RedisCluster):
        return _cluster_shards(await redis.cluster_nodes())
    info = await redis.info("replication")
    online = [
        v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    ]
    return [Shard("redis", len(online), len(online))]


def _cluster_shards(nodes: dict[str, dict[str, Any]]) -> list[Shard]:
    def healthy(node: dict[str, Any]) -> bool:
        return "fail" not in str(node.get("flags", "")) and bool(node.get("connected", True))

    primaries = {
        str(node["node_id"]): address
        for address, node in nodes.items()
        if "master" in str(node.get("flags", "")) and node.get("slots") and healthy(node)
    }
    counts, listed = dict.fromkeys(primaries, 0), dict.fromkeys(primaries, 0)
    for node in nodes.values():
        if "slave" in str(node.get("flags", "")) and node.get("master_id") in counts:
            listed[str(node["master_id"])] += 1
            if healthy(node):
                counts[str(node["master_id"])] += 1
    return [
        Shard(primaries[node_id], counts[node_id], listed[node_id])
        for node_id in sorted(primaries, key=primaries.get)  # type: ignore[arg-type]
    ]


class Replication:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._configured = settings.ack_replicas
        self._timeout_ms = settings.ack_timeout_ms
        self._seen_replica = False
        self.shards: list[Shard] = []
        self.read_at: float | None = None
        """When (monotonic) the topology was last read; None until it has been."""
        batching.shared(redis).ack = batching.Ack(self.wanted, self._timeout_ms)

    @property
    def wanted(self) -> int:
        if self._configured is not None:
            return self._configured
        return 1 if self._seen_replica else 0

    def wanted_for(self, shard: Shard) -> int:
        if self._configured is not None or not self._cluster:
            return self.wanted
        return 1 if shard.listed else 0

    def lacking(self) -> list[Shard]:
        """Shards whose primary has fewer replicas than acknowledged writes wait for."""
        return [shard for shard in self.shards if shard.replicas < self.wanted_for(shard)]

    def unreplicated(self) -> list[Shard]:
        """Cluster shards serving without a replica (after a failover, ALLY_ACK_REPLICAS unset)."""
        return [shard for shard in self.shards if self.wanted and not self.wanted_for(shard)]

    async def detect(self) -> None:
        found = await shards(self._redis)
        if any(shard.replicas for shard in found) and not self._seen_replica:
            self._seen_replica = True
            log.info("redis replicas found; acknowledged writes wait for them", extra={"shards": len(found)})
        before = {shard.primary for shard in self.unreplicated()}
        self.shards = found
        newly = sorted({shard.primary for shard in self.unreplicated()} - before)
        if newly:
            log.warning(
                "redis primaries without a replica: their writes are not replicated", extra={"primaries": newly}
            )
        per_node = {shard.primary: self.wanted_for(shard) for shard in found}
        batching.shared(self._redis).ack = batching.Ack(self.wanted, self._timeout_ms, per_node)
        self.read_at = time.monotonic()

    async def watch(self) -> None:
        """Read the topology again every REFRESH seconds, for the life of the process."""
        while True:
            await asyncio.sleep(REFRESH if self.read_at is not None else UNREAD_RETRY)
            try:
                # Bounded: a node that stopped answering (frozen, cut off) must not stall the refresh.
                await asyncio.wait_for(self.detect(), REFRESH)
            except (RedisError, OSError, TimeoutError) as exc:
                log.info("redis topology not read", extra={"error": type(exc).__name__})
