"""Microsoft Graph for tests: subscription create/update/reauthorize/delete as Graph answers them,
the validation handshake Graph makes before creating a subscription, and change and lifecycle
notifications posted in Graph's documented shapes."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

MAX_MINUTES = 10_080
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"


def _iso7(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond:06d}0Z"


def _error(status: int, code: str, message: str) -> web.Response:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    rid = str(uuid.uuid4())
    return web.json_response(
        {"error": {"code": code, "message": message, "innerError": {"date": now, "request-id": rid}}},
        status=status,
    )


@dataclass
class GraphSubscription:
    id: str
    owner: str
    body: dict[str, Any]
    expires: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.body["resource"],
            "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
            "changeType": self.body["changeType"],
            "clientState": self.body.get("clientState"),
            "notificationUrl": self.body["notificationUrl"],
            "lifecycleNotificationUrl": self.body.get("lifecycleNotificationUrl"),
            "expirationDateTime": _iso7(self.expires),
            "creatorId": "8ee44408-0679-472c-bc2a-692812af3437",
            "latestSupportedTlsVersion": self.body.get("latestSupportedTlsVersion", "v1_2"),
            "notificationContentType": "application/json",
        }


@dataclass
class Graph:
    tokens: dict[str, str] = field(default_factory=dict)
    """access token -> mailbox owner (the user's object id)"""
    subscriptions: dict[str, GraphSubscription] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(operation, owner) for every authorized call"""
    validations: list[tuple[str, int, str, str]] = field(default_factory=list)
    """(url, status, content type, body) of every validation handshake"""
    fail: dict[str, int] = field(default_factory=dict)
    """operation -> HTTP status to answer with instead"""
    server: TestServer | None = None
    session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1.0/subscriptions", self._create)
        app.router.add_patch("/v1.0/subscriptions/{id}", self._update)
        app.router.add_post("/v1.0/subscriptions/{id}/reauthorize", self._reauthorize)
        app.router.add_delete("/v1.0/subscriptions/{id}", self._delete)
        self.server = TestServer(app, port=0)
        await self.server.start_server()
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.close()

    @property
    def root(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1.0"))

    def mailbox(self, owner: str) -> str:
        token = "eyJ0eXAiOiJKV1Qi." + os.urandom(18).hex()
        self.tokens[token] = owner
        return token

    def count(self, operation: str, owner: str | None = None) -> int:
        return sum(1 for op, o in self.calls if op == operation and (owner is None or o == owner))

    def of(self, owner: str) -> list[GraphSubscription]:
        return [s for s in self.subscriptions.values() if s.owner == owner]

    # --- what Graph sends --------------------------------------------------------------------

    def notification(self, sub: GraphSubscription, message_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        mid = message_id or ("AAMkAGUAAAwTW09AAA=" + os.urandom(6).hex())
        item: dict[str, Any] = {
            "id": "lsgTZMr9KwAAA",
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": _iso7(sub.expires),
            "clientState": sub.body.get("clientState"),
            "changeType": "created",
            "resource": f"Users/{sub.owner}@{TENANT}/Messages/{mid}",
            "tenantId": TENANT,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": f"Users/{sub.owner}@{TENANT}/Messages/{mid}",
                "@odata.etag": 'W/"CQAAABYAAADkrWGo7bouTKlsgTZMr9KwAAAUWRHf"',
                "id": mid,
            },
        }
        item.update(overrides)
        return item

    def lifecycle_item(self, sub: GraphSubscription, event: str, **overrides: Any) -> dict[str, Any]:
        item = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": _iso7(sub.expires),
            "tenantId": TENANT,
            "clientState": sub.body.get("clientState"),
            "lifecycleEvent": event,
        }
        item.update(overrides)
        return item

    async def post(self, url: str, items: list[dict[str, Any]]) -> aiohttp.ClientResponse:
        assert self.session is not None
        async with self.session.post(
            url, data=json.dumps({"value": items}), headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            return resp

    async def notify(self, items: list[dict[str, Any]], sub: GraphSubscription) -> aiohttp.ClientResponse:
        return await self.post(sub.body["notificationUrl"], items)

    async def lifecycle(self, items: list[dict[str, Any]], sub: GraphSubscription) -> aiohttp.ClientResponse:
        return await self.post(sub.body["lifecycleNotificationUrl"], items)

    def remove(self, sub: GraphSubscription) -> None:
        """Graph drops a subscription on its side (before sending subscriptionRemoved)."""
        self.subscriptions.pop(sub.id, None)

    # --- Graph API -----------------------------------------------------------------------------

    def _owner(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        return self.tokens.get(header.removeprefix("Bearer ").strip())

    def _expiry(self, body: dict[str, Any]) -> dt.datetime | web.Response:
        try:
            raw = str(body["expirationDateTime"]).replace("Z", "+00:00")
            expires = dt.datetime.fromisoformat(raw)
        except (KeyError, ValueError):
            return _error(400, "InvalidRequest", "expirationDateTime is invalid")
        now = dt.datetime.now(dt.UTC)
        if expires <= now or expires > now + dt.timedelta(minutes=MAX_MINUTES):
            return _error(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {MAX_MINUTES} minutes in the future.",
            )
        return expires

    async def _validate(self, url: str) -> bool:
        assert self.session is not None
        token = "Validation: Testing client application reachability for subscription Request-Id: " + str(uuid.uuid4())
        async with self.session.post(
            f"{url}?validationToken={quote(token)}", headers={"Content-Type": "text/plain; charset=utf-8"}
        ) as resp:
            body = await resp.text()
            self.validations.append((url, resp.status, resp.content_type, body))
            return resp.status == 200 and resp.content_type == "text/plain" and body == token

    async def _create(self, request: web.Request) -> web.Response:
        owner = self._owner(request)
        if owner is None:
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        self.calls.append(("create", owner))
        if "create" in self.fail:
            return _error(self.fail["create"], "ServiceUnavailable", "Service is unavailable.")
        body = await request.json()
        if body.get("changeType") != "created" or body.get("resource") != "/me/mailFolders('inbox')/messages":
            return _error(400, "InvalidRequest", "Unsupported resource or change type.")
        state = body.get("clientState")
        if not isinstance(state, str) or not 0 < len(state) <= 128:
            return _error(400, "InvalidRequest", "clientState must be at most 128 characters.")
        expires = self._expiry(body)
        if isinstance(expires, web.Response):
            return expires
        for url in (body.get("notificationUrl"), body.get("lifecycleNotificationUrl")):
            if not isinstance(url, str) or not await self._validate(url):
                return _error(
                    400,
                    "ValidationError",
                    "Subscription validation request failed. Notification endpoint must respond with "
                    "200 OK to validation request.",
                )
        sub = GraphSubscription(str(uuid.uuid4()), owner, body, expires)
        self.subscriptions[sub.id] = sub
        return web.json_response(sub.as_json(), status=201)

    def _mine(self, request: web.Request, operation: str) -> GraphSubscription | web.Response:
        owner = self._owner(request)
        if owner is None:
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        self.calls.append((operation, owner))
        if operation in self.fail:
            return _error(self.fail[operation], "ServiceUnavailable", "Service is unavailable.")
        sub = self.subscriptions.get(request.match_info["id"])
        if sub is None or sub.owner != owner:
            return _error(404, "ResourceNotFound", "The object was not found.")
        return sub

    async def _update(self, request: web.Request) -> web.Response:
        sub = self._mine(request, "renew")
        if isinstance(sub, web.Response):
            return sub
        expires = self._expiry(await request.json())
        if isinstance(expires, web.Response):
            return expires
        sub.expires = expires
        return web.json_response(sub.as_json())

    async def _reauthorize(self, request: web.Request) -> web.Response:
        sub = self._mine(request, "reauthorize")
        if isinstance(sub, web.Response):
            return sub
        return web.Response(status=204)

    async def _delete(self, request: web.Request) -> web.Response:
        sub = self._mine(request, "delete")
        if isinstance(sub, web.Response):
            return sub
        del self.subscriptions[sub.id]
        return web.Response(status=204)
