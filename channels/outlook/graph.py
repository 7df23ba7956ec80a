"""Microsoft Graph subscription calls (create, renew, reauthorize, delete) through aiohttp.

Errors come back as `ProviderError` with Graph's HTTP status and error code
(`graph_<status>_<code>`), so callers can tell "gone" (404) from "try later".
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from foundation.clock import iso
from foundation.errors import ProviderError

RESOURCE = "/me/mailFolders('inbox')/messages"
CHANGE_TYPE = "created"
_FRACTION = re.compile(r"\.(\d+)")
_CODE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    expires_at: float


def graph_time(ts: float) -> str:
    return iso(ts)


def parse_time(value: object) -> float:
    """Graph writes up to seven fractional digits (`2016-11-20T18:23:45.9356913Z`)."""
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.replace("Z", "+00:00"), count=1)
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class Graph:
    def __init__(self, session: aiohttp.ClientSession, root: str, *, timeout: float = 20.0) -> None:
        self._session = session
        self._root = root.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        try:
            async with self._session.request(
                method, self._root + path, data=data, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(resp.status, raw, resp.headers.get("Retry-After"))
                return orjson.loads(raw) if raw.strip() else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"graph_unreachable: {type(exc).__name__}") from None
        except orjson.JSONDecodeError:
            raise ProviderError("graph_bad_answer") from None

    async def create(
        self, token: str, *, notification_url: str, lifecycle_url: str, client_state: str, expires_at: float
    ) -> Subscription:
        answer = await self._call(
            "POST",
            "/subscriptions",
            token,
            {
                "changeType": CHANGE_TYPE,
                "notificationUrl": notification_url,
                "lifecycleNotificationUrl": lifecycle_url,
                "resource": RESOURCE,
                "expirationDateTime": graph_time(expires_at),
                "clientState": client_state,
                "latestSupportedTlsVersion": "v1_2",
            },
        )
        return _subscription(answer)

    async def renew(self, token: str, subscription_id: str, expires_at: float) -> Subscription:
        answer = await self._call(
            "PATCH", f"/subscriptions/{subscription_id}", token, {"expirationDateTime": graph_time(expires_at)}
        )
        return _subscription(answer)

    async def reauthorize(self, token: str, subscription_id: str) -> None:
        await self._call("POST", f"/subscriptions/{subscription_id}/reauthorize", token)

    async def delete(self, token: str, subscription_id: str) -> None:
        try:
            await self._call("DELETE", f"/subscriptions/{subscription_id}", token)
        except ProviderError as exc:
            if exc.status != 404:
                raise


def _subscription(answer: Any) -> Subscription:
    try:
        return Subscription(str(answer["id"]), parse_time(answer["expirationDateTime"]))
    except (KeyError, TypeError, ValueError):
        raise ProviderError("graph_bad_subscription_answer") from None


def _error(status: int, raw: bytes, retry_after: str | None) -> ProviderError:
    code = "error"
    try:
        found = orjson.loads(raw)["error"]["code"]
        if isinstance(found, str) and _CODE.match(found):
            code = found
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    return ProviderError(f"graph_{status}_{code}", status=status, retry_after=wait)
