"""What the Gmail watch and the Graph subscription lifecycles share: timing, back-off, state fields."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from gateway.errors import ProviderError


@dataclass(frozen=True)
class Timing:
    """How often the renewal loops look for due work and how long a claim is leased."""

    poll: float = 5.0
    lease: float = 120.0
    concurrency: int = 8


def backoff(failures: int, error: Exception | None = None) -> float:
    """Seconds until the next attempt after `failures` failures in a row: 1 min doubling to 1 h, ±20 %."""
    delay = min(60.0 * 2.0 ** max(0, min(failures - 1, 6)), 3600.0)
    if isinstance(error, ProviderError) and error.retry_after:
        delay = min(max(delay, error.retry_after), 3600.0)
    return delay * random.uniform(0.8, 1.2)


def iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def text(values: dict[bytes, bytes], name: str) -> str:
    raw = values.get(name.encode())
    return raw.decode() if raw is not None else ""


def number(values: dict[bytes, bytes], name: str) -> float:
    try:
        return float(text(values, name) or 0)
    except ValueError:
        return 0.0
