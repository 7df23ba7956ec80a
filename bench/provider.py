"""Google's OAuth 2.0 token endpoint as the refresh grant sees it, on loopback, counting refreshes.

`POST /token` with `grant_type=refresh_token`, `refresh_token`, `client_id`, `client_secret`
(form-encoded, as google-auth sends it) answers like Google does: `{"access_token",
"expires_in", "scope", "token_type": "Bearer"}`, or `400 {"error": "invalid_grant"}` for a
refresh token it never issued. `--delay-ms` stands for the provider's own latency.
`GET /_count` says how many refreshes each refresh token caused.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections import Counter

from aiohttp import web

from bench.sink import run, serve

SCOPE = "https://www.googleapis.com/auth/gmail.readonly https://www.googleapis.com/auth/calendar"


def build(client_id: str, client_secret: str, delay: float) -> web.Application:
    refreshes: Counter[str] = Counter()

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        refresh = str(form.get("refresh_token", ""))
        if not refresh.startswith("1//bench-"):
            return web.json_response({"error": "invalid_grant", "error_description": "Bad Request"}, status=400)
        refreshes[refresh] += 1
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(
            {
                "access_token": "ya29.bench-" + secrets.token_urlsafe(48),
                "expires_in": 3599,
                "scope": SCOPE,
                "token_type": "Bearer",
            }
        )

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(dict(refreshes))

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/_count", count)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(build(args.client_id, args.client_secret, args.delay_ms / 1000), args.port))
