"""Benchmark 1 — routing throughput and added latency.

Path: load generator → webhook → (gateway | baseline forwarder) → the servers' sink process.
The gateway seals each update to its user's key, queues it durably in Redis (AOF everysec),
and its delivery worker signs and PUTs it to that user's server. The baseline POSTs the body
straight on. Both are measured against the same generator, sink and machine, interleaved
round by round so that noise from other work on the machine hits both alike.

Max sustained rate: the highest offered rate (open loop, `STEP` seconds) at which every
webhook is answered 2xx, every event reaches the server within `DRAIN` seconds of the last
send, and end-to-end p99 stays under `SUSTAINED_P99_MS` (a queue that grows does not). Then
p50/p99 end-to-end latency (webhook sent → event at the server) at half that rate.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from bench import profile
from bench.common import (
    PYTHON,
    ROOT,
    Results,
    Row,
    clear_of,
    log,
    machine_jiffies,
    median,
    percentile,
    process_tree,
    tree_cpu_seconds,
    watch_scans,
    watch_steal,
)
from bench.fleet import Fleet, User, make_users

STEP = 3.0
DRAIN = 1.5
SETTLE = 60.0
FLOOR = 20.0
SUSTAINED_P99_MS = 250.0
LATENCY_STEP = 8.0
USERS = 1000


@dataclass
class Step:
    system: str
    rate: float
    sent: int = 0
    ok: int = 0
    delivered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(sent at, end-to-end ms) per event, for looking at a time window."""
    ack_ms: list[float] = field(default_factory=list)
    gen_late_p99_ms: float = 0.0
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU time per delivered event, by process (µs): robust where throughput is noisy."""
    late: int = 0
    """Events that reached the server only after the drain window."""
    verified: int = 0
    mismatched: int = 0
    failures: list[str] = field(default_factory=list)
    machine_busy: float = 0.0
    """Share of the machine's CPU time (all cores) busy during the step, and stolen by the hypervisor."""
    machine_steal: float = 0.0
    instruments_us: dict[str, float] = field(default_factory=dict)
    """CPU time per delivered event of the generator and the sink (µs): not the measured system's,
    but they share its cores."""
    steal_bursts: list[tuple[float, float]] = field(default_factory=list)
    """The windows of the step in which the hypervisor took CPU time (`common.watch_steal`)."""
    scans: list[tuple[float, float]] = field(default_factory=list)
    """The windows in which the host's memory-scanning kernel thread ran (`common.watch_scans`)."""
    redis_forks: int = 0
    """Times Redis forked during the step (an AOF rewrite: its copy-on-write slows the commands)."""

    def clear(self) -> list[float]:
        """The latencies of the events whose whole way ran outside every steal burst and host memory scan."""
        return clear_of(self.samples, self.steal_bursts + self.scans)

    @property
    def p99_clear(self) -> float:
        return percentile(self.clear(), 99)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def sustained(self) -> bool:
        return (
            self.ok == self.sent
            and self.delivered >= self.sent
            and self.late == 0
            and self.p99 < SUSTAINED_P99_MS
            and self.gen_late_p99_ms < 50
            and not self.failures
        )

    def line(self) -> str:
        verdict = "sustained" if self.sustained else "NOT sustained"
        return (
            f"{self.system:>8} @ {self.rate:7.0f}/s: ok {self.ok}/{self.sent}, delivered {self.delivered}, "
            f"e2e p50 {self.p50:6.1f} ms p99 {self.p99:7.1f} ms, ack p99 {percentile(self.ack_ms, 99):6.1f} ms, "
            f"gen late p99 {self.gen_late_p99_ms:5.1f} ms, CPU/event "
            + ", ".join(f"{n} {us:.0f} µs" for n, us in self.cpu_us.items())
            + "".join(f", {n} {us:.0f} µs" for n, us in self.instruments_us.items())
            + f", machine busy {self.machine_busy:.0%} steal {self.machine_steal:.1%}"
            + self._bursts()
            + (f", Redis forked {self.redis_forks}×" if self.redis_forks else "")
            + f" → {verdict}"
        )

    def _bursts(self) -> str:
        if not self.steal_bursts and not self.scans:
            return ""
        clear = self.clear()
        p99 = percentile(clear, 99)
        return (
            f" in {len(self.steal_bursts)} bursts, {len(self.scans)} host memory scans "
            f"(p99 {p99:.1f} ms of the {len(clear)} events clear of both)"
        )


async def load(spec: dict[str, Any], duration: float) -> dict[str, Any]:
    """Run the load generator in its own process with `spec`; return what it recorded."""
    with tempfile.TemporaryDirectory(prefix="ally-bench-step-") as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        _write(spec_path, orjson.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bench.loadgen", str(spec_path), str(out_path), cwd=ROOT
        )
        try:
            await asyncio.wait_for(proc.wait(), duration + 45)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("the load generator did not finish") from None
        result: dict[str, Any] = orjson.loads(_read(out_path))
        return result


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


class Routing:
    def __init__(self, fleet: Fleet, users: list[User], *, ingress: str, others: list[User] | None = None) -> None:
        """Load goes to `users`, round-robin; `others` may receive events too but get no load."""
        self.fleet = fleet
        self.users = users
        self.ingress = ingress  # "core" (bench-only handoff route) or "telegram"
        self.next_update = int(time.time()) * 1000
        self.by_user = {u.user_id: i for i, u in enumerate([*users, *(others or [])])}

    def spec(self, system: str, rate: float, duration: float) -> dict[str, Any]:
        assert self.fleet.gateway is not None
        first = self.next_update
        self.next_update += int(rate * duration) + 10
        headers: dict[str, str] = {}
        if system == "baseline":
            assert self.fleet.forwarder is not None
            port = self.fleet.forwarder.port
            users = [["/telegram/webhook/bench", u.chat_id] for u in self.users]
        elif self.ingress == "core":
            port = self.fleet.gateway.port
            users = [[f"/bench/ingress/{u.user_id}", u.chat_id] for u in self.users]
        else:
            port = self.fleet.gateway.port
            bot_id, secret = self.telegram
            users = [[f"/telegram/webhook/{bot_id}", u.chat_id] for u in self.users]
            headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        return {
            "port": port,
            "rate": rate,
            "duration": duration,
            "first_update_id": first,
            "users": users,
            "headers": headers,
        }

    telegram: tuple[str, str] = ("", "")

    async def step(self, system: str, rate: float, duration: float = STEP) -> Step:
        await self.fleet.sink_call("POST", "/_reset")
        spec = self.spec(system, rate, duration)
        procs = self.processes(system)
        cpu_before = {name: tree_cpu_seconds(pids) for name, pids in procs.items()}
        assert self.fleet.sink is not None
        sink_before = tree_cpu_seconds([self.fleet.sink.pid])
        forks_before = await self._redis_forks()
        machine_before = machine_jiffies()
        bursts: list[tuple[float, float]] = []
        scans: list[tuple[float, float]] = []
        watches = [asyncio.create_task(watch_steal(bursts)), asyncio.create_task(watch_scans(scans))]
        try:
            out = await load(spec, duration)
        finally:
            for watch in watches:
                watch.cancel()
        busy, steal, total = (after - before for after, before in zip(machine_jiffies(), machine_before, strict=True))
        rows = out["rows"]
        result = Step(system, rate, sent=len(rows), ok=sum(1 for r in rows if 200 <= r[4] < 300))
        result.steal_bursts, result.scans = bursts, scans
        result.redis_forks = await self._redis_forks() - forks_before
        result.ack_ms = [(r[3] - r[2]) * 1000 for r in rows if r[3]]
        result.gen_late_p99_ms = percentile(out["late_ms"], 99)
        result.machine_busy, result.machine_steal = busy / max(1, total), steal / max(1, total)
        ended = time.monotonic()
        in_time = await self._wait_for(result.ok, ended + DRAIN)
        # A system that fell behind still owes events; wait for them, so that they neither
        # count here as on time nor arrive during the next step.
        await self._wait_for(result.ok, ended + SETTLE)
        dump = await self.fleet.sink_call("GET", "/_dump")
        # Polling above costs the measured processes nothing; the sink and generator are not counted
        # in the system's figures.
        delivered = max(1, in_time + max(0, result.ok - in_time))
        result.cpu_us = {n: (tree_cpu_seconds(p) - cpu_before[n]) * 1e6 / delivered for n, p in procs.items()}
        # The sink's figure includes the polling above (a few requests a step).
        result.instruments_us = {
            "generator": float(out.get("cpu_s", 0.0)) * 1e6 / delivered,
            "sink": (tree_cpu_seconds([self.fleet.sink.pid]) - sink_before) * 1e6 / delivered,
        }
        result.failures = dump["failures"]
        result.late = max(0, result.ok - in_time)
        if system == "baseline":
            self._match_raw(result, rows, dump)
        else:
            self._match_txns(result, rows, dump)
        return result

    @staticmethod
    def _match_raw(result: Step, rows: list[list[Any]], dump: dict[str, Any]) -> None:
        arrived = {uid: t for uid, t in dump["raw"]}
        result.delivered = len(arrived)
        result.samples = [(r[2], (arrived[r[1]] - r[2]) * 1000) for r in rows if r[1] in arrived]
        result.latencies_ms = [ms for _sent, ms in result.samples]

    def _match_txns(self, result: Step, rows: list[list[Any]], dump: dict[str, Any]) -> None:
        """Pair user u's k-th update sent with the k-th event u's server received.

        The gateway keeps each user's order, and one user's updates are len(users)/rate
        seconds apart (far more than the latency), so arrival order is send order. The sink
        opened one transaction in 50 and reported the update_id sealed inside: each must
        equal the update_id of the webhook it was paired with.
        """
        sends: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for user_index, update_id, sent, _done, status in rows:
            if 200 <= status < 300:
                sends[user_index].append((update_id, sent))
        arrivals: dict[int, list[float]] = defaultdict(list)
        first_event: dict[str, tuple[int, int]] = {}
        seen: set[str] = set()
        for user, txn, n, t in dump["txns"]:
            if txn in seen:
                continue  # a retry of a transaction already counted
            seen.add(txn)
            index = self.by_user[user]
            first_event[txn] = (index, len(arrivals[index]))
            arrivals[index].extend([t] * n)
        for index, user_sends in sends.items():
            for (_update_id, sent), arrived in zip(user_sends, arrivals.get(index, []), strict=False):
                result.samples.append((sent, (arrived - sent) * 1000))
        result.latencies_ms = [ms for _sent, ms in result.samples]
        result.delivered = sum(len(a) for a in arrivals.values())
        for _user, txn, update_id in dump["checked"]:
            index, k = first_event[txn]
            result.verified += 1
            if k >= len(sends[index]) or sends[index][k][0] != update_id:
                result.mismatched += 1
        if result.mismatched:
            result.failures.append(f"{result.mismatched}/{result.verified} sampled events not in send order")

    def processes(self, system: str) -> dict[str, list[int]]:
        """The processes doing the measured system's work (not the generator, not the sink); the
        gateway's are its whole tree (with `--workers N`, the parent and its N processes)."""
        assert self.fleet.gateway is not None
        assert self.fleet.redis is not None
        if system == "baseline":
            assert self.fleet.forwarder is not None
            return {"forwarder": [self.fleet.forwarder.pid]}
        return {"gateway": process_tree(self.fleet.gateway.pid), "redis": [self.fleet.redis.pid]}

    async def _redis_forks(self) -> int:
        assert self.fleet.redis is not None
        client = Redis.from_url(self.fleet.redis.url)
        try:
            return int((await client.info("stats")).get("total_forks", 0))
        finally:
            await client.aclose()

    async def _wait_for(self, events: int, deadline: float) -> int:
        """Poll the sink until it holds `events` events or `deadline` passes; return its count."""
        while True:
            count = int((await self.fleet.sink_call("GET", "/_count"))["events"])
            if count >= events or time.monotonic() >= deadline:
                return count
            await asyncio.sleep(0.05)

    async def max_rate(self, system: str, hint: float | None) -> tuple[float, list[Step]]:
        """Bisect the highest sustained rate; `hint` (the previous round's answer) narrows the search."""
        steps: list[Step] = []

        async def ok(rate: float) -> bool:
            s = await self.step(system, rate)
            steps.append(s)
            log("  " + s.line())
            return s.sustained

        if hint is None:
            lo, hi = 0.0, 100.0
            while await ok(hi):
                lo, hi = hi, hi * 1.6
                if hi > 20_000:
                    break
            bisections = 3
        else:
            lo, hi = hint * 0.85, hint * 1.15
            if not await ok(lo):
                lo, hi = max(0.0, lo / 2), lo
            elif await ok(hi):
                lo, hi = hi, hi * 1.3
            bisections = 2
        for _ in range(bisections):
            mid = (lo + hi) / 2
            if await ok(mid):
                lo = mid
            else:
                hi = mid
        # Below FLOOR events/s the machine is too busy to measure anything; say so, do not divide by 0.
        return max(lo, FLOOR), steps


async def telegram_standin(ingress: str) -> tuple[Any, dict[str, str]]:
    """The project's local Bot API (getMe, setWebhook at start-up) and the gateway's settings for
    it, when the load goes through the Telegram webhook; else nothing."""
    if ingress != "telegram":
        return None, {}
    from bench.fairness import SECRET
    from tests.support.telegram import TOKEN, FakeTelegram

    telegram = FakeTelegram()
    await telegram.start()
    env = {
        "ALLY_TELEGRAM_BOT_TOKEN": TOKEN,
        "ALLY_TELEGRAM_API_URL": telegram.url,
        "ALLY_TELEGRAM_WEBHOOK_SECRET": SECRET,
    }
    return telegram, env


async def loaded_with_users(fleet: Fleet, ingress: str) -> tuple[Routing, str]:
    """`USERS` users registered (and their private chats linked, for the Telegram ingress); the
    bench that loads them, and what its load goes through."""
    users = make_users(USERS)
    await fleet.register(users)
    bench = Routing(fleet, users, ingress=ingress)
    if ingress != "telegram":
        return bench, "POST /bench/ingress/{user} → services.handoff (core path; no channel in front)"
    from bench.fairness import SECRET, link_private
    from tests.support.telegram import BOT_ID

    sem = asyncio.Semaphore(16)

    async def link(user: User) -> None:
        async with sem:
            await link_private(fleet, user)

    await asyncio.gather(*(link(u) for u in users))
    await asyncio.sleep(2.0)  # the telegram.linked events reach the servers before measuring
    bench.telegram = (str(BOT_ID), SECRET)
    return bench, "POST /telegram/webhook/<bot> (secret checked, update parsed, chat routed, sealed, queued)"


async def log_redis_stalls(fleet: Fleet) -> None:
    """What Redis itself recorded of its stalls over 5 ms so far (AOF fsync and writes, forks)."""
    assert fleet.redis is not None
    client = Redis.from_url(fleet.redis.url)
    try:
        latest = await client.execute_command("LATENCY", "LATEST")
    finally:
        await client.aclose()
    if not latest:
        log("redis: no stall of 5 ms or more recorded")
    for event, _when, last_ms, max_ms in latest:
        label = event.decode() if isinstance(event, bytes) else event
        log(f"redis: stalls in {label}: latest {last_ms} ms, worst {max_ms} ms")


async def run(results: Results, *, rounds: int, ingress: str = "telegram", profile_seconds: float = 6.0) -> None:
    name = "routing"
    telegram, env = await telegram_standin(ingress)
    fleet = Fleet(gateway_env=env)
    await fleet.start(forwarder=True)
    try:
        bench, what = await loaded_with_users(fleet, ingress)
        results.note(
            name,
            f"gateway ingress measured: {what}; {USERS} users, round-robin, dedicated redis-server "
            f"(the embedded binary, AOF everysec, unix socket)",
        )
        # Warm both paths (connections, caches, JIT-free but allocator-warm) before measuring.
        await bench.step("baseline", 200, 1.0)
        await bench.step("gateway", 200, 1.0)
        best: dict[str, list[float]] = {"baseline": [], "gateway": []}
        hints: dict[str, float | None] = {"baseline": None, "gateway": None}
        for r in range(rounds):
            order = ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline")
            for system in order:
                log(f"round {r + 1}/{rounds}: max sustained rate of {system}")
                rate, _ = await bench.max_rate(system, hints[system])
                hints[system] = rate
                best[system].append(rate)
        gw, base = median(best["gateway"]), median(best["baseline"])
        results.add(
            Row(
                name,
                "max sustained events/s, one gateway process",
                gw,
                "ev/s",
                base,
                "thin forwarder",
                "≥ 0.5×",
                gw / base >= 0.5,
                best["gateway"],
            )
        )
        results.add(Row(name, "max sustained events/s, baseline forwarder", base, "ev/s", rounds=best["baseline"]))
        lat: dict[str, dict[str, list[float]]] = {s: {"p50": [], "p99": [], "ack99": [], "clear99": []} for s in best}
        # Both at the same rate, half of the gateway's max: the tail the gateway adds at a load it
        # carries, against the forwarder's at that load.
        half = gw / 2
        for r in range(rounds):
            for system in ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline"):
                s = await bench.step(system, half, LATENCY_STEP)
                log("  latency " + s.line() + f" (verified {s.verified}, mismatched {s.mismatched})")
                lat[system]["p50"].append(s.p50)
                lat[system]["p99"].append(s.p99)
                lat[system]["ack99"].append(percentile(s.ack_ms, 99))
                lat[system]["clear99"].append(s.p99_clear)
        for q in ("p50", "p99"):
            gw_q, base_q = median(lat["gateway"][q]), median(lat["baseline"][q])
            # The target: within 3× of the forwarder's tail, or 10 ms where the forwarder's own is ≤ 3 ms.
            target = "≤ 3× (≤ 10 ms)" if q == "p99" else ""
            met = (gw_q <= 3 * base_q or (base_q <= 3.0 and gw_q <= 10.0)) if q == "p99" else None
            results.add(
                Row(
                    name,
                    f"end-to-end {q} at half of own max rate",
                    gw_q,
                    "ms",
                    base_q,
                    "thin forwarder at the same rate",
                    target,
                    met,
                    lat["gateway"][q],
                )
            )
        await log_redis_stalls(fleet)
        # Not targets: the tail of the events that met no steal burst (`Step.steal_bursts`: how much
        # of the tail the host makes), and how soon a webhook is answered.
        for key, what in (
            ("clear99", "end-to-end p99 at half of own max rate, events clear of steal bursts and host memory scans"),
            ("ack99", "webhook answer p99 at half load (durably queued)"),
        ):
            ours, theirs = lat["gateway"][key], lat["baseline"][key]
            results.add(Row(name, what, median(ours), "ms", median(theirs), "thin forwarder", rounds=ours))
        await cpu_per_event(results, bench, gw / 2, rounds)
        if profile_seconds > 0:
            await profile_gateway(results, bench, fleet, 0.8 * gw, profile_seconds)
    finally:
        await fleet.stop()
        if telegram is not None:
            await telegram.close()


async def cpu_per_event(results: Results, bench: Routing, rate: float, rounds: int) -> None:
    """CPU time per event of both systems at one rate (half the gateway's max): the figure that
    noise on a shared machine moves least, since waiting for a busy CPU costs no CPU time."""
    cpu: dict[str, list[float]] = {"gateway": [], "redis": [], "forwarder": []}
    for r in range(rounds):
        for system in ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline"):
            s = await bench.step(system, rate, STEP)
            log("  cpu " + s.line())
            for process, us in s.cpu_us.items():
                cpu[process].append(us)
    results.add(
        Row(
            "routing",
            "CPU time per event, gateway process, at half its max rate",
            median(cpu["gateway"]),
            "µs",
            median(cpu["forwarder"]),
            "thin forwarder at the same rate",
            "≤ 1,000 µs",
            median(cpu["gateway"]) <= 1000,
            rounds=cpu["gateway"],
        )
    )
    redis = median(cpu["redis"])
    results.add(Row("routing", "CPU time per event, Redis server, same steps", redis, "µs", rounds=cpu["redis"]))


async def profile_gateway(results: Results, bench: Routing, fleet: Fleet, rate: float, seconds: float) -> None:
    assert fleet.gateway is not None
    if profile.py_spy() is None:
        results.note("routing", "py-spy not installed: no profile")
        return
    log(f"profiling the gateway at {rate:.0f}/s for {seconds:.0f} s")
    sampler = asyncio.create_task(profile.record(fleet.gateway.pid, seconds))
    await asyncio.sleep(0.3)
    await bench.step("gateway", rate, seconds)
    summary = await sampler
    if summary is None:
        results.note("routing", "py-spy could not sample the gateway (ptrace not permitted?)")
        return
    for line in profile.report(summary):
        results.note("routing-profile", line)
