"""What waiting for a replica costs an acknowledged write (ALLY_ACK_REPLICAS, Redis `WAIT`).

Three Redis set-ups started here on loopback TCP, AOF `everysec` as the embedded default: a
single primary, and a primary with one replica, written to without and with `WAIT 1`. Each
runs the hand-over's shape of write (one script call per event, marked durable, through the
shared batcher, so one `WAIT` covers a whole flush) from `--callers` concurrent callers in a
closed loop for `--seconds`, and once with a single caller (the latency one event sees).
Rounds are interleaved so noise hits every set-up alike; the median is printed.

    python -m bench.replication [--seconds 3] [--callers 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis as redis_sync

from bench.common import percentile, redis_binary, redis_version
from foundation.batching import Ack, Batcher, script
from foundation.storage import connect

ENQUEUE = "redis.call('XADD', KEYS[1], '*', 'e', ARGV[1]) return 1"
PAYLOAD = os.urandom(600)  # about one sealed event


@contextmanager
def server(root: Path, name: str, *extra: str) -> Iterator[int]:
    port = _free_port()
    directory = root / name
    directory.mkdir()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "everysec", "--repl-diskless-sync-delay", "0", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        client = redis_sync.Redis(port=port)
        for _ in range(300):
            try:
                client.ping()
                break
            except redis_sync.ConnectionError:
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_sync(primary: int) -> None:
    client = redis_sync.Redis(port=primary)
    for _ in range(500):
        if client.wait(1, 100) >= 1:
            return
        time.sleep(0.02)
    raise RuntimeError("the replica did not come online")


async def measure(port: int, replicas: int, callers: int, seconds: float) -> tuple[float, float]:
    """(writes per second, p99 latency in ms) of `callers` closed-loop callers."""
    redis = connect(f"redis://127.0.0.1:{port}/0")
    batch = Batcher(redis)
    batch.ack = Ack(replicas, 500)
    enqueue = redis.register_script(ENQUEUE)
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def caller(n: int) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await batch.call(script(enqueue, [f"{{u:{n}}}:q"], [PAYLOAD], durable=True))
            latencies.append(time.perf_counter() - started)

    await batch.call(script(enqueue, ["warm"], [PAYLOAD], durable=True))
    began = time.monotonic()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    elapsed = time.monotonic() - began
    await redis.flushall()
    await redis.aclose()
    return len(latencies) / elapsed, percentile(latencies, 99) * 1000


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ally-bench-replication-"))
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        with ExitStack() as servers:
            single = servers.enter_context(server(root, "single"))
            primary = servers.enter_context(server(root, "primary"))
            servers.enter_context(server(root, "replica", "--replicaof", "127.0.0.1", str(primary)))
            _in_sync(primary)
            setups = {
                "single, no WAIT": (single, 0),
                "replicated, no WAIT": (primary, 0),
                "replicated, WAIT 1": (primary, 1),
            }
            for _ in range(args.rounds):
                for name, (port, replicas) in setups.items():
                    for callers in (args.callers, 1):
                        measured = await measure(port, replicas, callers, args.seconds)
                        results.setdefault((name, callers), []).append(measured)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"Redis {redis_version(redis_binary())}, {args.rounds} rounds of {args.seconds} s, median")
    print("| set-up | callers | writes/s | p99 ms |")
    print("|---|---|---|---|")
    for (name, callers), rounds in results.items():
        rate = statistics.median(r[0] for r in rounds)
        p99 = statistics.median(r[1] for r in rounds)
        print(f"| {name} | {callers} | {rate:,.0f} | {p99:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
