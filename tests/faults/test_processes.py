"""Real processes under steady load: a web process and two `--role worker` processes against
a dedicated `redis-server` (AOF, fsync always). Providers retry until they get a 2xx; every
update that got one must reach its user's server, in order, with duplicates only as
retries of the same transaction, and never two transactions of one user open at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync

from foundation.config import Settings
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import make_settings, register_user
from tests.support.redis_servers import RedisServer
from tests.support.subprocess_gateway import ROOT, GatewayProcess, environment
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

USERS = ("ann", "ben", "cat", "dan")


class IngressProcess(GatewayProcess):
    """The real CLI with the stand-in ingress route added (see tests/support/ingress.py)."""

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.ingress", *self.args],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )


@dataclasses.dataclass
class Cluster:
    redis: RedisServer
    settings: Settings
    web: IngressProcess
    workers: list[GatewayProcess]
    dedicated: DedicatedServer
    logs: list[Path]
    acked: dict[str, list[int]] = dataclasses.field(default_factory=lambda: {u: [] for u in USERS})
    refused: int = 0

    async def start_worker(self, worker: GatewayProcess) -> None:
        worker.spawn()
        await wait_for_line(worker.log_path, "worker running")

    async def restart(self, process: GatewayProcess) -> None:
        process.kill()
        if process is self.web:
            await process.start()
        else:
            await self.start_worker(process)

    async def load(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await asyncio.gather(*(self._sender(session, user, stop) for user in USERS))

    async def _sender(self, session: aiohttp.ClientSession, user: str, stop: asyncio.Event) -> None:
        for seq in itertools.count():
            if stop.is_set():
                return
            # A provider retries the same update until it gets a 2xx.
            while True:
                try:
                    async with session.post(f"{self.web.url}/test/ingress/{user}", json={"seq": seq}) as resp:
                        if resp.status == 200:
                            self.acked[user].append(seq)
                            break
                        assert resp.status == 503, await resp.text()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                self.refused += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    async def drained(self, timeout: float = 90.0) -> None:
        def done() -> bool:
            return all(set(self.acked[u]) <= set(delivered(self.dedicated, u)) for u in USERS)

        await self.dedicated.wait_for(done, timeout=timeout)

    def check(self) -> None:
        for user in USERS:
            seqs = delivered(self.dedicated, user)
            assert seqs == sorted(seqs), f"{user}: out of order"
            assert len(seqs) == len(set(seqs)), f"{user}: an update was queued twice"
            assert set(self.acked[user]) <= set(seqs), f"{user}: acknowledged updates lost"
        # A repeated event only ever comes again inside the same transaction (a retry).
        txns_of: dict[str, set[str]] = {}
        for received in self.dedicated.received:
            for event in received.body["events"]:
                txns_of.setdefault(event["id"], set()).add(received.txn_id)
        assert all(len(txns) == 1 for txns in txns_of.values())
        assert all(len(bodies) == 1 for bodies in self.dedicated.bodies.values()), "a retry changed its body"
        assert self.dedicated.overlaps == [], "two transactions of one user were open at once"
        for path in self.logs:
            text = path.read_text()
            assert "Traceback" not in text


def delivered(server: DedicatedServer, user: str) -> list[int]:
    return [e["payload"]["seq"] for e in server.events(user)]


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_line(path: Path, needle: str, limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while needle not in _text(path):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path.name}: no {needle!r}:\n{_text(path)[-2000:]}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(tmp_path: Path, dedicated: DedicatedServer) -> AsyncIterator[Cluster]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    settings = make_settings(tmp_path, redis_url=redis.url, delivery_lease=2.0, delivery_timeout=1.0)
    env = environment(settings, ALLY_LOG_LEVEL="INFO")
    logs = [tmp_path / "web.log", tmp_path / "w1.log", tmp_path / "w2.log"]
    web = IngressProcess(env, logs[0], "serve", "--role", "web")
    workers = [GatewayProcess(env, path, "serve", "--role", "worker") for path in logs[1:]]
    # Each transaction stays open a little while, so an overlap would be seen.
    dedicated.mode.update(dict.fromkeys(USERS, "slow"))
    dedicated.delay = 0.02
    c = Cluster(redis, settings, web, workers, dedicated, logs)
    try:
        await web.start()
        for worker in workers:
            await c.start_worker(worker)
        async with aiohttp.ClientSession() as session:
            for user in USERS:
                await register_user(session, dedicated, user, base=web.url, admin_token=settings.admin_token)
        yield c
    finally:
        for process in (web, *workers):
            process.stop()
        redis.stop()


async def run_load(c: Cluster, chaos: Any) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(c.load(stop))
    try:
        await chaos()
    finally:
        stop.set()
        await load
    await c.drained()
    c.check()


async def test_kill_9_five_times_under_load_loses_nothing_acknowledged(cluster: Cluster):
    victims = [cluster.workers[0], cluster.web, cluster.workers[1], cluster.workers[0], cluster.workers[1]]

    async def chaos() -> None:
        for victim in victims:
            await asyncio.sleep(1.5)
            await cluster.restart(victim)
        await asyncio.sleep(1.0)

    await run_load(cluster, chaos)
    assert sum(len(v) for v in cluster.acked.values()) > 100, "the load was steady"


async def test_redis_restarted_under_load_is_ridden_through(cluster: Cluster):
    seen: list[int] = []

    async def chaos() -> None:
        await asyncio.sleep(1.5)
        cluster.redis.stop(crash=True)  # fsync always: nothing acknowledged may be lost even so
        async with aiohttp.ClientSession() as session:
            for _ in range(10):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{cluster.web.url}/readyz") as resp:
                        seen.append(resp.status)
                await asyncio.sleep(0.1)
            cluster.redis.start()
            for _ in range(100):
                async with session.get(f"{cluster.web.url}/readyz") as resp:
                    seen.append(resp.status)
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)

    await run_load(cluster, chaos)
    assert 503 in seen, "readiness said the gateway could not serve while Redis was down"
    assert seen[-1] == 200, "and came back"
    assert cluster.refused > 0, "providers were told to retry while Redis was down"
    # No stuck consumer: every queue empties and no transaction is left open. The events are all
    # at the servers already; an acknowledgement that the crash cut off is made again when the
    # transaction is retried (at most a lease later), so this is waited for, not read at once.
    r = redis_sync.Redis.from_url(cluster.redis.url)
    prefix = cluster.settings.key_prefix

    def settled() -> bool:
        keys = list(r.scan_iter(match=f"{prefix}*"))
        return (
            not [k for k in keys if k.endswith(b":txn")]
            and [r.xlen(k) for k in keys if k.endswith(b":q")] == [0] * len(USERS)
            and r.zcard(f"{prefix}due") == 0
        )

    await eventually(settled, timeout=cluster.settings.delivery_lease * 5, every=0.1)
    cluster.check()  # the retries sent nothing new and nothing twice outside its transaction
    r.close()
