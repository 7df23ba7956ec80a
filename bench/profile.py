"""Sampling profiles of a running process with py-spy, summed up as text (no browser needed)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

PROJECT_DIRS = ("foundation/", "gateway/", "routing/", "channels/", "oauth/")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, rate: int = 250) -> dict[str, Counter[str]] | None:
    """Sample `pid` for `seconds`; return self and inclusive sample counts per function and per file."""
    exe = py_spy()
    if exe is None:
        return None
    out = Path(tempfile.mkstemp(prefix="ally-bench-profile-", suffix=".txt")[1])
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
        "--format", "raw", "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()
    return _summarize_file(out) if proc.returncode == 0 else None


def _summarize_file(path: Path) -> dict[str, Counter[str]] | None:
    return summarize(path.read_text()) if path.exists() else None


def _frame_name(frame: str) -> tuple[str, str]:
    # py-spy raw frames look like "handoff (routing/handoff.py:96)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        root = str(Path(__file__).resolve().parent.parent) + "/"
        path = path.removeprefix(root)
    return f"{name} ({path})", path


def summarize(raw: str) -> dict[str, Counter[str]]:
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    incl_file: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f[0].startswith("<")] or frames
        if not frames:
            continue
        self_fn[frames[-1][0]] += count
        for name in {f[0] for f in frames}:
            incl_fn[name] += count
        for path in {f[1] for f in frames}:
            incl_file[path] += count
    return {"self": self_fn, "inclusive": incl_fn, "files": incl_file, "total": Counter({"samples": total})}


def report(summary: dict[str, Counter[str]], top: int = 14) -> list[str]:
    total = summary["total"]["samples"] or 1
    lines = [f"{total} samples; self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in summary["self"].most_common(top)]
    lines.append("inclusive time of project code:")
    ours = [(name, n) for name, n in summary["inclusive"].most_common() if name.split("(")[-1].startswith(PROJECT_DIRS)]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in ours[:top]]
    return lines
