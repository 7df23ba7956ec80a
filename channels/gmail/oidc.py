"""Verifies the OIDC token Pub/Sub puts on every push (`Authorization: Bearer <JWT>`).

Signature against Google's signing certificates (a PEM x509 map by key id, from
`ALLY_GOOGLE_CERTS_URL`), kept in memory for the `max-age` the endpoint sends and
fetched again when a token names a key id we do not know (at most once every
`REFETCH_GAP` seconds for such look-ups, so forged key ids cannot make us hammer the endpoint).
Claims: `iss`, `aud`, `email`, `email_verified`, `iat`/`exp` (google-auth).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from typing import Any

import aiohttp
import orjson
from google.auth import exceptions as google_exceptions
from google.auth import jwt

from foundation.errors import ApiError, Unauthorized

log = logging.getLogger(__name__)

ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
REFETCH_GAP = 30.0
DEFAULT_MAX_AGE = 3600.0
CLOCK_SKEW = 10
_MAX_AGE = re.compile(r"max-age=(\d+)")


def _header(token: str) -> dict[str, Any]:
    try:
        head = token.split(".", 1)[0]
        value = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise Unauthorized("invalid_token", "the push token is not a JWT") from None
    if not isinstance(value, dict):
        raise Unauthorized("invalid_token", "the push token is not a JWT")
    return value


class PushVerifier:
    def __init__(
        self, session: aiohttp.ClientSession, certs_url: str, audience: str | None, service_account: str | None
    ) -> None:
        self._session = session
        self._url = certs_url
        self._audience = audience
        self._email = service_account
        self._certs: dict[str, str] = {}
        self._fresh_until = 0.0
        self._fetched_at = 0.0
        self._unknown_fetch_at = -REFETCH_GAP
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return bool(self._audience and self._email)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; `Unauthorized` for anything not a valid push from our service account."""
        if not self.configured:
            raise Unauthorized("push_not_configured", "ALLY_GMAIL_PUSH_AUDIENCE and _SERVICE_ACCOUNT are unset")
        kid = _header(token).get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid_token", "the push token names no signing key")
        certs = await self._certs_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=self._audience, clock_skew_in_seconds=CLOCK_SKEW
            )
        except (google_exceptions.GoogleAuthError, ValueError, TypeError):
            raise Unauthorized("invalid_token", "the push token failed verification") from None
        if claims.get("iss") not in ISSUERS:
            raise Unauthorized("invalid_token", "the push token has the wrong issuer")
        if claims.get("email") != self._email or claims.get("email_verified") is not True:
            raise Unauthorized("invalid_token", "the push token is not from the expected service account")
        return claims

    async def _certs_for(self, kid: str) -> dict[str, str]:
        now = time.monotonic()
        if kid in self._certs and now < self._fresh_until:
            return self._certs
        async with self._lock:
            now = time.monotonic()
            stale = now >= self._fresh_until
            unknown = kid not in self._certs and now - self._unknown_fetch_at >= REFETCH_GAP
            if unknown and not stale:
                self._unknown_fetch_at = now
            if stale or unknown:
                await self._fetch()
        if kid not in self._certs:
            raise Unauthorized("invalid_token", "the push token is signed by an unknown key")
        return self._certs

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            async with self._session.get(self._url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = orjson.loads(await resp.read())
                cache_control = resp.headers.get("Cache-Control", "")
        except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("could not fetch Google's signing certificates", extra={"error": str(exc)[:200]})
            if not self._certs:
                raise ApiError("certs_unavailable", "cannot verify pushes right now", status=503) from None
            # Keep serving from the keys we have, and do not wait on a dead endpoint for every push.
            self._fresh_until = max(self._fresh_until, self._fetched_at + REFETCH_GAP)
            return
        if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
            log.warning("Google's signing certificates have an unexpected shape")
            if not self._certs:
                raise ApiError("certs_unavailable", "cannot verify pushes right now", status=503)
            return
        match = _MAX_AGE.search(cache_control)
        max_age = float(match.group(1)) if match else DEFAULT_MAX_AGE
        self._certs = {str(k): v for k, v in body.items()}
        self._fresh_until = self._fetched_at + max_age
