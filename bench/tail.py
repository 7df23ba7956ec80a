"""Benchmark — the tail against the load: both systems stepped at the same fixed rates.

`routing` compares the two systems' p99 at one rate, half of the gateway's max. This one finds
the gateway's max once, then steps the gateway and the thin forwarder at several fractions of it
(`FRACTIONS`), rounds interleaved, on one fleet (one generator, sink and Redis): p50 and p99 end
to end, CPU time per event of each system (and of Redis), and how busy the whole machine was,
so that the ratio can be read against the machine's load rather than at one point.
"""

from __future__ import annotations

import contextlib

from bench.common import Results, Row, log, median
from bench.fleet import Fleet
from bench.routing import STEP, Routing, Step, loaded_with_users, log_redis_stalls, telegram_standin

FRACTIONS = (0.15, 0.3, 0.5)
"""Rates stepped, as fractions of the gateway's max sustained rate in this run."""


async def run(results: Results, *, rounds: int, ingress: str = "telegram") -> None:
    telegram, env = await telegram_standin(ingress)
    fleet = Fleet(gateway_env=env)
    await fleet.start(forwarder=True)
    try:
        bench, what = await loaded_with_users(fleet, ingress)
        results.note("tail", f"{what}; both systems on one fleet, rounds interleaved")
        await bench.step("baseline", 200, 1.0)
        await bench.step("gateway", 200, 1.0)
        top, _ = await bench.max_rate("gateway", None)
        log(f"tail: the gateway's max in this run: {top:,.0f} events/s")
        for fraction in FRACTIONS:
            await _at(results, bench, top * fraction, f"{fraction:.0%} of the gateway's max", rounds)
        await log_redis_stalls(fleet)
    finally:
        await fleet.stop()
        if telegram is not None:
            with contextlib.suppress(Exception):
                await telegram.close()


async def _at(results: Results, bench: Routing, rate: float, label: str, rounds: int) -> None:
    seen: dict[str, list[Step]] = {"baseline": [], "gateway": []}
    for r in range(rounds):
        for system in ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline"):
            s = await bench.step(system, rate, STEP * 2)
            log(f"  tail {label}: " + s.line())
            seen[system].append(s)
    at = f"at {rate:,.0f} ev/s ({label})"
    gateway, forwarder = seen["gateway"], seen["baseline"]
    for q in ("p50", "p99"):
        ours = [getattr(s, q) for s in gateway]
        theirs = [getattr(s, q) for s in forwarder]
        results.add(
            Row("tail", f"end-to-end {q} {at}", median(ours), "ms", median(theirs), "thin forwarder", rounds=ours)
        )
    clear = [s.p99_clear for s in gateway]
    results.add(
        Row(
            "tail",
            f"end-to-end p99 {at}, events clear of steal bursts and host memory scans",
            median(clear),
            "ms",
            median([s.p99_clear for s in forwarder]),
            "thin forwarder",
            rounds=clear,
        )
    )
    cpu = [s.cpu_us["gateway"] for s in gateway]
    results.add(
        Row(
            "tail",
            f"CPU time per event {at}",
            median(cpu),
            "µs",
            median([s.cpu_us["forwarder"] for s in forwarder]),
            "thin forwarder",
            rounds=cpu,
        )
    )
    redis = [s.cpu_us["redis"] for s in gateway]
    results.add(Row("tail", f"CPU time per event, Redis, {at}", median(redis), "µs", rounds=redis))
    busy = [s.machine_busy * 100 for s in gateway]
    results.add(
        Row(
            "tail",
            f"machine busy {at}",
            median(busy),
            "%",
            median([s.machine_busy * 100 for s in forwarder]),
            "with the forwarder",
            rounds=busy,
        )
    )
