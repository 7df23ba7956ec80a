"""What the post-quantum hybrid suite costs against X25519, per event (contract §9.6).

- sealing µs per event: the gateway's own `seal` on a typical Telegram update, N events in a
  row on one core, CPU time, the median over rounds (rounds of the two suites interleaved);
- bytes per held event: the envelopes exactly as the hand-over queues them (`e` and `c` fields
  of a stream entry), N of them in a dedicated redis-server's stream, `MEMORY USAGE` / N;
- opening µs per event at the server (CPU time), for the other side of the bill.

`python -m bench --only sealing`, or alone without touching `bench/results/`:
`python -m bench.sealing` (prints the table).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from bench.common import RedisServer, Results, Row, log, machine, median
from foundation.clock import iso_now
from foundation.types import JSON, SealedEvent
from routing.handoff import new_id
from routing.sealing import PrivateKey, ServerKey, SuiteName, b64url, open_sealed, parse_public_key, seal
from tests.support.dedicated import new_key

EVENTS = 2000
HELD = 5000
USER = "bench-user"
# A private-chat text message as Telegram sends it (about 330 bytes of JSON).
UPDATE = {
    "update_id": 912345678,
    "message": {
        "message_id": 4711,
        "from": {"id": 424242, "is_bot": False, "first_name": "Alice", "language_code": "en"},
        "chat": {"id": 424242, "first_name": "Alice", "type": "private"},
        "date": 1795773600,
        "text": "Can you move my 3 pm call with Bob to tomorrow morning and tell him why?",
    },
}


def keys(suite: SuiteName) -> tuple[PrivateKey, ServerKey]:
    private, raw = new_key(suite)
    return private, parse_public_key(b64url(raw))


def envelope(key: ServerKey, n: int) -> bytes:
    event_id = new_id("evt")
    payload = {**UPDATE, "update_id": 912345678 + n}
    sealed_text = seal(key, USER, event_id, payload)
    sealed = SealedEvent(event_id, "telegram.update", "telegram", iso_now(), sealed_text, key.kid)
    return orjson.dumps(sealed.as_json())


def per_event_us(work: Callable[[int], object], n: int) -> float:
    # CPU time of this process, not wall time: on a shared machine other processes' load
    # stretches wall time, while sealing is pure CPU work on one thread.
    started = time.process_time()
    for i in range(n):
        work(i)
    return (time.process_time() - started) / n * 1e6


async def held_bytes(redis: aioredis.Redis, key: ServerKey, stream: str) -> float:
    pipe = redis.pipeline(transaction=False)
    for n in range(HELD):
        pipe.xadd(stream, {"e": envelope(key, n), "c": "telegram"})
    await pipe.execute()
    used = int(await redis.memory_usage(stream, samples=0) or 0)
    await redis.delete(stream)
    return used / HELD


async def run(results: Results, *, rounds: int = 3) -> None:
    suites: tuple[SuiteName, ...] = ("X25519", "MLKEM768-X25519")
    pairs = {s: keys(s) for s in suites}
    sealing: dict[str, list[float]] = {s: [] for s in suites}
    opening: dict[str, list[float]] = {s: [] for s in suites}
    for _ in range(rounds):
        for suite in suites:
            private, public = pairs[suite]

            def seal_one(i: int, k: ServerKey = public) -> str:
                return seal(k, USER, f"evt_{i}", UPDATE)

            sealing[suite].append(per_event_us(seal_one, EVENTS))
            sealed = [seal(public, USER, f"evt_{i}", UPDATE) for i in range(EVENTS // 4)]

            def open_one(i: int, k: PrivateKey = private, s: list[str] = sealed) -> JSON:
                return open_sealed(k, USER, f"evt_{i}", s[i])

            opening[suite].append(per_event_us(open_one, len(sealed)))
    with RedisServer(appendonly=False) as server:
        redis = aioredis.Redis.from_url(server.url)
        try:
            held = {s: await held_bytes(redis, pairs[s][1], f"bench:q:{s}") for s in suites}
        finally:
            await redis.aclose()
    sizes = {s: len(envelope(pairs[s][1], 0)) for s in suites}
    base, pq = suites
    metrics = [
        ("sealing time per event (Telegram update, ~330 B)", "µs", sealing),
        ("opening time per event at the server", "µs", opening),
    ]
    for metric, unit, values in metrics:
        for suite in suites:
            row = Row("sealing", f"{metric}, {suite}", median(values[suite]), unit, rounds=values[suite])
            if suite == pq:
                row.baseline, row.baseline_name = median(values[base]), f"{base}, same run"
            results.add(row)
    for suite in suites:
        row = Row("sealing", f"bytes per held event in Redis (stream entry), {suite}", held[suite], "B")
        if suite == pq:
            row.baseline, row.baseline_name = held[base], base
        results.add(row)
    results.note(
        "sealing",
        f"queued envelope (JSON) {sizes[base]} B with {base}, {sizes[pq]} B with {pq}; "
        f"{EVENTS} events sealed per round, {HELD} events held for the memory figure",
    )


def main() -> None:
    results = Results(machine())
    log(f"sealing: both suites, one core; load average {results.machine['loadavg_at_start']}")
    asyncio.run(run(results))
    print(results.table())
    for text in results.notes.get("sealing", []):
        print(f"- {text}")


if __name__ == "__main__":
    main()
