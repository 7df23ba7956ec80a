"""Token metering: input and output tokens per user, model and calendar month (UTC).

One Redis hash per user and month, `{prefix}{u:<user_id>}:ai:usage:<YYYY-MM>`, with
fields `input:<model>`, `output:<model>`, `requests:<model>`, `provider:<model>`
(who served it: `anthropic`, `openai` or `google`) and `total` (input + output,
what the cap counts; `admission.py` reads it to reserve). Input tokens include cache writes and cache
reads, which the provider bills as input. Hashes expire after `RETENTION` so that
the export covers about a year. Only counts and model names are stored: nothing of
a prompt or an answer.

The counts come from the SDK's usage models: `Usage` of a whole message, and for a
stream `message_start`'s usage updated by each `message_delta`'s (cumulative
counts, the later value wins, as the SDK's own accumulator does).
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ai.sse import SseEvent
from foundation.clock import iso
from foundation.errors import StorageError
from foundation.redis_keys import Keys

if TYPE_CHECKING:
    from anthropic.types import MessageDeltaUsage, Usage

log = logging.getLogger(__name__)

RETENTION = 400 * 24 * 3600
TOTAL_FIELD = "total"
EXPORT_MONTHS = 13
_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output


def _tokens(counts: dict[str, int]) -> Tokens:
    return Tokens(
        input=counts.get("input_tokens", 0)
        + counts.get("cache_creation_input_tokens", 0)
        + counts.get("cache_read_input_tokens", 0),
        output=counts.get("output_tokens", 0),
    )


def _usage(raw: Any, *, delta: bool = False) -> dict[str, int]:
    # Imported on first use: the SDK's package takes seconds to import, and an operator command
    # that only reads the stored counts (status, export) never parses an answer.
    from anthropic.types import MessageDeltaUsage, Usage

    return _counts((MessageDeltaUsage if delta else Usage).model_validate(raw))


def _counts(usage: Usage | MessageDeltaUsage) -> dict[str, int]:
    return {name: value for name in _USAGE_FIELDS if isinstance(value := getattr(usage, name), int)}


def tokens_of_message(body: bytes) -> Tokens:
    """Usage of a whole Messages answer; zero (and a warning) when it carries none."""
    try:
        message = orjson.loads(body)
        return _tokens(_usage(message["usage"]))
    except (orjson.JSONDecodeError, TypeError, KeyError, ValidationError):
        log.warning("answer without readable usage; nothing metered")
        return Tokens()


class StreamCounter:
    """Follows a stream as its events pass: usage, and whether it ended properly."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.stopped = False
        """`message_stop` was seen."""
        self.errored = False
        """An `error` event was seen (the caller has been told)."""

    @property
    def tokens(self) -> Tokens:
        return _tokens(self._counts)

    def see(self, event: SseEvent) -> None:
        if event.name == "message_stop":
            self.stopped = True
        elif event.name == "error":
            self.errored = True
        elif event.name in ("message_start", "message_delta"):
            try:
                data: Any = orjson.loads(event.data)
                if event.name == "message_start":
                    self._counts.update(_usage(data["message"]["usage"]))
                else:
                    self._counts.update(_usage(data["usage"], delta=True))
            except (orjson.JSONDecodeError, TypeError, KeyError, ValidationError):
                log.warning("stream event without readable usage", extra={"event": event.name})


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def next_month_start(ts: float) -> str:
    year, month = time.gmtime(ts)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return iso(calendar.timegm((year, month, 1, 0, 0, 0)))


def _months_back(ts: float, count: int) -> list[str]:
    year, month = time.gmtime(ts)[:2]
    months = []
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return months


def _by_provider(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The month's tokens and requests summed per provider, so fallback use shows at a glance."""
    providers: dict[str, dict[str, int]] = {}
    for entry in models.values():
        sums = providers.setdefault(entry["provider"], {"input_tokens": 0, "output_tokens": 0, "requests": 0})
        for name in sums:
            sums[name] += entry[name]
    return dict(sorted(providers.items()))


class Meter:
    def __init__(self, redis: Redis, keys: Keys, cap: int | None, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._keys = keys
        self.cap = cap
        self._clock = clock

    def usage_key(self, user_id: str, month: str) -> str:
        return self._keys.user_key(user_id, f"ai:usage:{month}")

    async def record(self, user_id: str, provider: str, model: str, tokens: Tokens) -> None:
        key = self.usage_key(user_id, month_of(self._clock()))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, f"provider:{model}", provider)
                pipe.hincrby(key, f"input:{model}", tokens.input)
                pipe.hincrby(key, f"output:{model}", tokens.output)
                pipe.hincrby(key, f"requests:{model}", 1)
                pipe.hincrby(key, TOTAL_FIELD, tokens.total)
                pipe.expire(key, RETENTION)
                await pipe.execute()
        except RedisError as exc:
            raise StorageError("usage could not be recorded") from exc

    async def _month(self, user_id: str, month: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(self.usage_key(user_id, month))
        models: dict[str, dict[str, Any]] = {}
        total = 0
        for field, value in raw.items():
            name = field.decode()
            if name == TOTAL_FIELD:
                total = int(value)
                continue
            kind, _, model = name.partition(":")
            if kind in ("input", "output", "requests", "provider"):
                # Months recorded before fallback providers existed were all Anthropic's.
                entry = models.setdefault(
                    model, {"provider": "anthropic", "input_tokens": 0, "output_tokens": 0, "requests": 0}
                )
                if kind == "provider":
                    entry["provider"] = value.decode()
                else:
                    entry[kind if kind == "requests" else f"{kind}_tokens"] = int(value)
        return {
            "month": month,
            "total_tokens": total,
            "models": dict(sorted(models.items())),
            "providers": _by_provider(models),
        }

    async def usage(self, user_id: str) -> dict[str, Any]:
        """This month by model, with the cap (`null`: unlimited) and what is left of it."""
        now = self._clock()
        try:
            month = await self._month(user_id, month_of(now))
        except RedisError as exc:
            raise StorageError("usage could not be read") from exc
        remaining = None if self.cap is None else max(0, self.cap - month["total_tokens"])
        return {**month, "cap": self.cap, "remaining": remaining, "resets_at": next_month_start(now)}

    async def export(self, user_id: str) -> dict[str, Any]:
        """Every month still kept, newest first (months without usage left out)."""
        try:
            months = [await self._month(user_id, m) for m in _months_back(self._clock(), EXPORT_MONTHS)]
        except RedisError as exc:
            raise StorageError("usage could not be read") from exc
        return {"cap": self.cap, "months": [m for m in months if m["models"]]}
