"""Gmail `users.getProfile` and Graph `GET /me`, answering like Google and Microsoft do.

The bearer token is checked against the local authorization server's introspection endpoint
(RFC 7662), so only a token that server really issued (and did not revoke) gets an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class MailApis:
    introspection_url: str
    clients: dict[str, tuple[str, str]]
    """Route family ("gmail", "graph") → the client credentials used to introspect its tokens."""
    ssl: Any
    calls: list[str] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def gmail_root(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/"))

    @property
    def graph_root(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1.0"))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gmail/v1/users/{user_id}/profile", self._profile)
        app.router.add_get("/v1.0/me", self._me)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _subject(self, request: web.Request, family: str) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        client_id, secret = self.clients[family]
        form = {"token": token, "client_id": client_id, "client_secret": secret}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.introspection_url, data=form, ssl=self.ssl) as resp,
        ):
            answer = await resp.json()
        return answer.get("sub") if answer.get("active") else None

    async def _profile(self, request: web.Request) -> web.Response:
        self.calls.append("gmail.getProfile")
        subject = await self._subject(request, "gmail")
        if subject is None or request.match_info["user_id"] != "me":
            # https://developers.google.com/gmail/api/guides/handle-errors (401: invalid credentials)
            error = {
                "code": 401,
                "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                            "location": "Authorization", "locationType": "header"}],
                "status": "UNAUTHENTICATED",
            }  # fmt: skip
            return web.json_response({"error": error}, status=401)
        return web.json_response(
            {"emailAddress": subject, "messagesTotal": 1234, "threadsTotal": 987, "historyId": "4455667"}
        )

    async def _me(self, request: web.Request) -> web.Response:
        self.calls.append("graph.me")
        subject = await self._subject(request, "graph")
        if subject is None:
            # https://learn.microsoft.com/graph/errors
            error = {
                "code": "InvalidAuthenticationToken",
                "message": "Access token validation failure.",
                "innerError": {"date": "2026-11-27T10:00:00", "request-id": "0b3e8c7e-0000-0000-0000-000000000000"},
            }
            return web.json_response({"error": error}, status=401)
        name = subject.split("@")[0]
        return web.json_response(
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(mail,userPrincipalName)/$entity",
                "businessPhones": [],
                "displayName": name.title(),
                "givenName": name.title(),
                "jobTitle": None,
                "mail": subject,
                "mobilePhone": None,
                "officeLocation": None,
                "preferredLanguage": "en-US",
                "surname": None,
                "userPrincipalName": subject,
                "id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
            }
        )
