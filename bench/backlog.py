"""Benchmark 5 — backlog drain: a server that was down comes back to 10,000 held events.

One user's server answers 503 while 10,000 events are queued for it (handed off in batches
of 100 through the core path). Other users get a steady background load throughout. Then
the server comes back and calls `POST /v1/ping`; we measure the time from the ping to the
last held event arriving, check that all 10,000 arrived once and in order (every sealed
event is opened and its update_id compared), and compare the other users' end-to-end
latency during the drain with their latency in a window without any backlog (same run,
same load).
"""

from __future__ import annotations

import asyncio
import time

import orjson

from bench.common import Results, Row, log, median, percentile
from bench.fleet import Fleet, User, make_users
from bench.loadgen import update_body
from bench.routing import Routing
from routing.sealing import open_sealed, unb64url

HELD = 10_000
BATCH = 100
BACKGROUND_USERS = 200
BACKGROUND_RATE = 100.0
WINDOW = 12.0
PING_AFTER = 2.0


async def run(results: Results, *, rounds: int) -> None:
    name = "backlog"
    fleet = Fleet()
    await fleet.start()
    try:
        background = make_users(BACKGROUND_USERS)
        held_users = make_users(rounds, prefix="held")
        await fleet.register([*background, *held_users])
        bench = Routing(fleet, background, ingress="core", others=held_users)
        await bench.step("gateway", BACKGROUND_RATE, 1.0)
        drains, quiet99, during99, quiet50, during50, rates = [], [], [], [], [], []
        for r, user in enumerate(held_users):
            log(f"round {r + 1}/{rounds}: {HELD} events held for {user.user_id}")
            quiet = await bench.step("gateway", BACKGROUND_RATE, WINDOW / 2)
            first_id = await fill(fleet, bench, user)
            drain, during, in_order = await drain_under_load(fleet, bench, user, first_id)
            log(
                f"  drained {HELD} in {drain:.2f} s ({HELD / drain:.0f} ev/s), in order: {in_order}; "
                f"others p99 {quiet.p99:.1f} ms without backlog, {percentile(during, 99):.1f} ms during the drain"
            )
            if not in_order:
                results.note(name, f"round {r + 1}: held events NOT delivered exactly once in order")
            drains.append(drain)
            rates.append(HELD / drain)
            quiet50.append(quiet.p50)
            quiet99.append(quiet.p99)
            during50.append(percentile(during, 50))
            during99.append(percentile(during, 99))
        results.add(
            Row(
                name,
                f"time to drain {HELD:,} held events after the server's ping",
                median(drains),
                "s",
                rounds=drains,
                note="in order, exactly once",
            )
        )
        results.add(Row(name, "drain rate", median(rates), "ev/s", rounds=rates))
        results.add(
            Row(
                name,
                f"other users' p50 during the drain ({BACKGROUND_RATE:.0f} ev/s background)",
                median(during50),
                "ms",
                median(quiet50),
                "same load, no backlog",
                rounds=during50,
            )
        )
        results.add(
            Row(
                name,
                "other users' p99 during the drain",
                median(during99),
                "ms",
                median(quiet99),
                "same load, no backlog",
                rounds=during99,
            )
        )
    finally:
        await fleet.stop()


async def fill(fleet: Fleet, bench: Routing, user: User) -> int:
    """Take the user's server down and queue HELD events for it; return the first update_id."""
    assert fleet.gateway is not None
    await fleet.sink_call("POST", "/_mode", {user.user_id: "down"})
    await fleet.sink_call("POST", "/_keep", [user.user_id])
    first = bench.next_update
    bench.next_update += HELD + 10
    began = time.monotonic()
    date = int(time.time())
    for start in range(0, HELD, BATCH):
        batch = b"[" + b",".join(update_body(first + i, user.chat_id, date) for i in range(start, start + BATCH)) + b"]"
        async with fleet.http.post(f"{fleet.gateway.url}/bench/ingress/{user.user_id}", data=batch) as resp:
            if resp.status != 200:
                raise RuntimeError(f"filling the backlog: {resp.status} {await resp.text()}")
    log(f"  queued {HELD} events in {time.monotonic() - began:.1f} s while the server was down")
    return first


async def drain_under_load(fleet: Fleet, bench: Routing, user: User, first_id: int) -> tuple[float, list[float], bool]:
    assert fleet.gateway is not None
    load = asyncio.create_task(bench.step("gateway", BACKGROUND_RATE, WINDOW))
    await asyncio.sleep(PING_AFTER)
    await fleet.sink_call("POST", "/_mode", {user.user_id: "ok"})
    pinged = time.monotonic()
    async with fleet.http.post(
        f"{fleet.gateway.url}/v1/ping", headers={"Authorization": f"Bearer {user.server_token}"}
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"ping: {resp.status} {await resp.text()}")
    step = await load
    deadline = time.monotonic() + 60
    while True:
        dump = await fleet.sink_call("GET", "/_dump")
        mine = [t for t in dump["txns"] if t[0] == user.user_id]
        if sum(t[2] for t in mine) >= HELD or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    last = max((t[3] for t in mine), default=float("nan"))
    drain = last - pinged
    during = [ms for sent, ms in step.samples if pinged <= sent <= last]
    in_order = check_order(user, dump["kept"].get(user.user_id, []), first_id)
    await fleet.sink_call("POST", "/_keep", [])
    return drain, during, in_order


def check_order(user: User, bodies: list[str], first_id: int) -> bool:
    """Open every delivered event; the update_ids must be first_id, first_id+1, ... exactly once."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.from_private_bytes(unb64url(user.private_key))
    seen_txns: set[str] = set()
    ids: list[int] = []
    for body in bodies:
        txn = orjson.loads(body)
        if txn["txn_id"] in seen_txns:
            continue
        seen_txns.add(txn["txn_id"])
        for event in txn["events"]:
            ids.append(int(open_sealed(key, user.user_id, event["id"], event["sealed"])["update_id"]))
    return ids == list(range(first_id, first_id + HELD))
