"""The Bot API on the wire: one call in, Telegram's own answer out.

The gateway passes Telegram's JSON back to dedicated servers unchanged, so this
layer keeps the raw status and body (python-telegram-bot's `Bot` turns errors into
exceptions and rewrites their text). Transient failures (5xx, network) are retried
with tenacity; 4xx come back as they are. The bot token is part of every URL here,
so URLs and lower-layer exception texts are never logged or raised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from foundation import metrics
from foundation.errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file sent as a multipart part (its bytes live only in memory for one request)."""

    name: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = field(repr=False)
    data: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.data.get("ok") is True

    @property
    def result(self) -> Any:
        return self.data.get("result")

    @property
    def retry_after(self) -> float | None:
        """Telegram's flood-wait (`parameters.retry_after`) when this is a 429."""
        if self.status != 429:
            return None
        params = self.data.get("parameters")
        value = params.get("retry_after") if isinstance(params, dict) else None
        return float(value) if isinstance(value, int | float) and value >= 0 else 1.0


class _Transient(Exception):
    def __init__(self, reply: Reply | None) -> None:
        super().__init__("transient Bot API failure")
        self.reply = reply


def unavailable() -> ApiError:
    return ApiError("telegram_unavailable", "the Telegram Bot API did not answer; retry later", status=502)


def form_value(value: Any) -> str:
    """How Telegram expects a parameter in a form: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def decode(status: int, body: bytes) -> Reply:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        # Proxies in front of Telegram can answer HTML; callers still get Telegram's JSON shape.
        data = {"ok": False, "error_code": status, "description": "unexpected answer from the Bot API"}
        body = orjson.dumps(data)
    return Reply(status, body, data)


class BotApi:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: str,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        self._base = f"{api_url.rstrip('/')}/bot{token}/"
        self._file_base = f"{api_url.rstrip('/')}/file/bot{token}/"
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10.0)

    async def call(self, method: str, params: Mapping[str, Any], uploads: Sequence[Upload] = ()) -> Reply:
        """Call `method`; a 5xx or network failure is retried, then answered as Telegram's JSON or a 502."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(initial=self._backoff, max=8 * self._backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    reply = await self._post(method, params, uploads)
                    if reply.status >= 500:
                        raise _Transient(reply)
        except _Transient as exc:
            metrics.TELEGRAM_CALLS.labels(method, "unavailable").inc()
            if exc.reply is not None:
                return exc.reply
            raise unavailable() from None
        metrics.TELEGRAM_CALLS.labels(method, "ok" if reply.ok else f"http_{reply.status}").inc()
        return reply

    async def _post(self, method: str, params: Mapping[str, Any], uploads: Sequence[Upload]) -> Reply:
        # A fresh body per attempt: aiohttp's FormData cannot be sent twice.
        data: aiohttp.FormData | dict[str, str]
        fields = {k: form_value(v) for k, v in params.items() if v is not None}
        if uploads:
            data = aiohttp.FormData(quote_fields=False)
            for name, value in fields.items():
                data.add_field(name, value)
            for up in uploads:
                data.add_field(up.name, up.data, filename=up.filename, content_type=up.content_type)
        else:
            data = fields
        try:
            async with self._session.post(self._base + method, data=data, timeout=self._timeout) as resp:
                return decode(resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("bot api call failed", extra={"method": method, "error": type(exc).__name__})
            raise _Transient(None) from None

    @contextlib.asynccontextmanager
    async def download(self, file_path: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The file behind a `getFile` answer, as an open response to stream from."""
        try:
            resp = await self._session.get(self._file_base + file_path.lstrip("/"), timeout=self._timeout)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("bot api download failed", extra={"error": type(exc).__name__})
            raise unavailable() from None
        try:
            yield resp
        finally:
            resp.release()
