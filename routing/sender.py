"""Sending one transaction to the user's server (contract §4), and what its answer says about
the next attempt: signed with every valid webhook secret, bounded in time and in what is read
back, never following a redirect.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import time
from dataclasses import dataclass

from foundation import metrics
from foundation.errors import ApiError, ClosedError
from routing import http1, signing
from routing.registry import Target
from routing.urls import validate_server_url

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None
    retry_after: float | None = None


def backoff(attempts: int) -> float:
    """Delay before retry number `attempts` (1 = first retry): 1 s doubling, cap 5 min, ±20 %."""
    base = min(BACKOFF_CAP, BACKOFF_START * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.8, 1.2))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    if seconds != seconds:  # NaN
        return None
    return float(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds)))


@functools.lru_cache(maxsize=4096)
def _allowed_in_production(server_url: str) -> bool:
    """Whether production may send to `server_url`: a pure check of the URL's spelling (scheme,
    host), kept per URL because it runs at every attempt (IDNA mapping costs tens of µs)."""
    try:
        validate_server_url(server_url, production=True)
    except ApiError:
        return False
    return True


class Sender:
    """PUTs transactions; `timeout` is the whole attempt's (the worker keeps it under half its lease)."""

    def __init__(self, client: http1.Client, *, timeout: float, production: bool) -> None:
        self._client = client
        self._timeout = timeout
        self._production = production
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def send(self, txn_id: str, body: bytes, target: Target | None) -> Outcome:
        if target is None:
            return Outcome(False, None)
        if self._closed:
            raise ClosedError("delivery worker is closed")
        # In production the client checks the address of every socket it opens (names and
        # literals); the URL itself (scheme, host spelling) is checked here, at every attempt,
        # so a record stored under older rules is never sent to.
        if self._production and not _allowed_in_production(target.server_url):
            metrics.DELIVERIES.labels("refused_url").inc()
            log.warning("delivery refused: server_url is not allowed in production")
            return Outcome(False, None)
        stamp = int(time.time())
        headers = [
            ("webhook-id", txn_id),
            ("webhook-timestamp", str(stamp)),
            # Every valid secret signs (one while a rotation's old secret lasts, else one).
            ("webhook-signature", " ".join(signing.signature(s, txn_id, stamp, body) for s in target.secrets)),
            ("Content-Type", "application/json"),
        ]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                # The answer's body is not used: a hostile server must not make us buffer it all.
                answer = await self._client.put(
                    target.server_url, f"/ally/v1/transactions/{txn_id}", headers, body, limit=MAX_ANSWER_BYTES
                )
            status = answer.status
            retry_after = parse_retry_after(answer.retry_after)
        except (TimeoutError, OSError) as exc:
            metrics.DELIVERIES.labels("unreachable").inc()
            log.info(
                "delivery attempt failed",
                extra={
                    "txn_id": txn_id,
                    "error": type(exc).__name__,
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                },
            )
            return Outcome(False, None)
        if 200 <= status < 300:
            metrics.child(metrics.DELIVERIES, "acknowledged").inc()
            return Outcome(True, status)
        metrics.DELIVERIES.labels("refused").inc()
        log.info("delivery refused", extra={"txn_id": txn_id, "status": status})
        return Outcome(False, status, retry_after)
