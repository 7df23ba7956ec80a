"""Benchmark — scaling: one gateway process against N (`ally-gateway serve --workers N`).

One fleet per process count, side by side (each its own redis-server, sink and gateway, with
the same 1,000 users), loaded exactly as in `routing`: the max sustained rate of each, bisected
in interleaved rounds, then at one common rate (half the baseline's max) the CPU time per event
of every gateway process (the supervising parent included) and of Redis, and the end-to-end
latency. Ratios are N processes over the first count given, measured in the same run.

The generator, the sink and Redis run on the same cores as the gateway, so on a machine with
few cores N processes cannot reach N× however well they scale on their own.
"""

from __future__ import annotations

import contextlib

from bench.common import Results, Row, log, median
from bench.fleet import Fleet
from bench.routing import STEP, USERS, Routing, loaded_with_users, telegram_standin


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


async def run(results: Results, *, rounds: int, workers: tuple[int, ...] = (1, 2), ingress: str = "telegram") -> None:
    name = "scaling"
    base = workers[0]
    telegram, env = await telegram_standin(ingress)
    fleets = {n: Fleet(gateway_env=env, workers=n) for n in workers}
    try:
        benches: dict[int, Routing] = {}
        for n, fleet in fleets.items():
            await fleet.start()
            benches[n], what = await loaded_with_users(fleet, ingress)
        results.note(
            name,
            f"{what}; {USERS} users per fleet; process counts {', '.join(map(str, workers))}, each as "
            "`ally-gateway serve --workers N` (N > 1: a supervising parent and N processes on one port)",
        )
        for bench in benches.values():
            await bench.step("gateway", 200, 1.0)  # warm connections and caches
        best: dict[int, list[float]] = {n: [] for n in workers}
        hints: dict[int, float | None] = dict.fromkeys(workers)
        for r in range(rounds):
            for n in workers if r % 2 == 0 else tuple(reversed(workers)):
                log(f"round {r + 1}/{rounds}: max sustained rate, {_processes(n)}")
                rate, _ = await benches[n].max_rate("gateway", hints[n])
                hints[n] = rate
                best[n].append(rate)
        top = {n: median(best[n]) for n in workers}
        results.add(Row(name, f"max sustained events/s, {_processes(base)}", top[base], "ev/s", rounds=best[base]))
        for n in workers[1:]:
            metric = f"max sustained events/s, {_processes(n)}"
            results.add(Row(name, metric, top[n], "ev/s", top[base], _processes(base), rounds=best[n]))
        await _at_one_rate(results, benches, workers, top[base] / 2, rounds)
    finally:
        for fleet in fleets.values():
            await fleet.stop()
        if telegram is not None:
            with contextlib.suppress(Exception):
                await telegram.close()


async def _at_one_rate(
    results: Results, benches: dict[int, Routing], workers: tuple[int, ...], rate: float, rounds: int
) -> None:
    """CPU per event and latency of every process count at the same offered rate; and of the first
    count at the share of that rate each process of the others carries (`rate * first / N`): an
    event loop's CPU per event grows as its own rate falls (fewer events share each wake-up, each
    Redis round trip, each write), so this tells that effect from a cost of running N processes."""
    base = workers[0]
    seen: dict[int, dict[str, list[float]]] = {n: {"gateway": [], "redis": [], "p99": []} for n in workers}
    share: dict[int, list[float]] = {n: [] for n in workers[1:]}
    for r in range(rounds):
        for n in workers if r % 2 == 0 else tuple(reversed(workers)):
            s = await benches[n].step("gateway", rate, STEP * 2)
            log(f"  {_processes(n)}: " + s.line())
            seen[n]["gateway"].append(s.cpu_us["gateway"])
            seen[n]["redis"].append(s.cpu_us["redis"])
            seen[n]["p99"].append(s.p99)
            if n != base:
                s = await benches[base].step("gateway", rate * base / n, STEP * 2)
                log(f"  {_processes(base)} at the share of each of {n}: " + s.line())
                share[n].append(s.cpu_us["gateway"])
    at = f"at {rate:,.0f} ev/s (half of {_processes(base)}'s max)"
    for key, metric, unit in (
        ("gateway", f"CPU time per event, every gateway process, {at}", "µs"),
        ("redis", "CPU time per event, Redis server, same steps", "µs"),
        ("p99", f"end-to-end p99 {at}", "ms"),
    ):
        value = median(seen[base][key])
        results.add(Row("scaling", f"{metric}, {_processes(base)}", value, unit, rounds=seen[base][key]))
        for n in workers[1:]:
            row = Row("scaling", f"{metric}, {_processes(n)}", median(seen[n][key]), unit, value, _processes(base))
            row.rounds = seen[n][key]
            results.add(row)
    for n, values in share.items():
        each = rate * base / n
        metric = f"CPU time per event, {_processes(base)} at {each:,.0f} ev/s (what each of {n} carries above)"
        results.add(Row("scaling", metric, median(values), "µs", rounds=values))
        row = Row(
            "scaling",
            f"CPU time per event, {_processes(n)} at {rate:,.0f} ev/s, against {_processes(base)} at {each:,.0f}",
            median(seen[n]["gateway"]),
            "µs",
            median(values),
            f"{_processes(base)} at the same rate per process",
        )
        row.rounds = seen[n]["gateway"]
        results.add(row)
