"""The connect flow (contract §2, §7): admin URL → browser binding → provider → callback.

1. `POST /admin/v1/users/{id}/connect` creates a one-use session valid 15 minutes.
2. `GET /oauth/connect/{session}` spends it, sets an HttpOnly, Secure, SameSite=Lax cookie
   binding this browser to a fresh `state`, and redirects to the provider (PKCE S256).
3. `GET /oauth/callback/{provider}` spends the state (single use), checks the cookie, exchanges
   the code, stores the grant through the broker, and redirects to the `return_url` with
   `status=connected` or `status=error&reason=<code>`.

Sessions and states are global records named by the SHA-256 of their secret (the secret itself
is never stored), kept an hour past their validity so that a late browser still gets a proper
`expired_session` redirect. The provider's pending flow (PKCE verifier, msal's flow dict) is
encrypted under the user's data key. Every record is listed in the user's `oauth:flows` set so
erasure can remove them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from aiohttp import web

from gateway import metrics
from gateway.admin import admin_user
from gateway.clock import iso
from gateway.config import Settings, origin_of
from gateway.errors import BadRequest, GatewayError, NotFound, ProviderError
from gateway.http import json_response, read_json_object
from gateway.keys import SERVICES
from gateway.services import Services
from oauth.store import PROVIDERS

log = logging.getLogger(__name__)

VALID_FOR = 15 * 60
KEPT_AFTER = 3600
COOKIE_PREFIX = "ally_oauth_"

# Reason codes on the return_url (docs/oauth.md).
ACCESS_DENIED = "access_denied"
BAD_STATE = "bad_state"
EXPIRED_SESSION = "expired_session"
SESSION_USED = "session_used"
PROVIDER_ERROR = "provider_error"
INTERNAL_ERROR = "internal_error"

# KEYS[1]: a session record. Returns its fields and marks it used; the caller sees `used` as it was.
_SPEND = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then redis.call('HSET', KEYS[1], 'used', '1') end
return fields
"""

# KEYS[1]: a state record. Returns its fields and deletes it: a state is good for one callback.
_TAKE = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then redis.call('DEL', KEYS[1]) end
return fields
"""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def validate_return_url(value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise BadRequest("invalid_return_url", "return_url must be an absolute URL")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
        raise BadRequest("invalid_return_url", "return_url must be an absolute https:// URL")
    if origin_of(value) not in settings.allowed_return_origins:
        raise BadRequest("invalid_return_url", "return_url is outside ALLY_ALLOWED_RETURN_ORIGINS")
    return value


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


class Flows:
    """The Redis side of sessions and states."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._spend = services.redis.register_script(_SPEND)
        self._take = services.redis.register_script(_TAKE)

    def session_key(self, digest: str) -> str:
        return self._s.keys.global_key(f"oauth:connect:{digest}")

    def state_key(self, digest: str) -> str:
        return self._s.keys.global_key(f"oauth:state:{digest}")

    def index_key(self, user_id: str) -> str:
        return self._s.keys.user_key(user_id, "oauth:flows")

    async def _put(self, user_id: str, key: str, fields: dict[str, str | bytes]) -> None:
        redis = self._s.redis
        await redis.hset(key, mapping=fields)
        await redis.expire(key, VALID_FOR + KEPT_AFTER)
        await redis.sadd(self.index_key(user_id), key)
        await redis.expire(self.index_key(user_id), VALID_FOR + KEPT_AFTER)

    async def new_session(self, user_id: str, provider: str, return_url: str) -> tuple[str, float]:
        secret = secrets.token_urlsafe(32)
        expires_at = time.time() + VALID_FOR
        fields: dict[str, str | bytes] = {
            "user_id": user_id,
            "provider": provider,
            "return_url": return_url,
            "expires_at": repr(expires_at),
        }
        await self._put(user_id, self.session_key(_digest(secret)), fields)
        return secret, expires_at

    async def spend_session(self, secret: str) -> dict[str, str]:
        return _pairs(await self._spend(keys=[self.session_key(_digest(secret))]))

    async def new_state(self, session: dict[str, str], state: str, binding: str, pending: dict[str, Any]) -> None:
        user_id, digest = session["user_id"], _digest(state)
        sealed = await self._s.vault.encrypt(user_id, ("oauth-flow", digest), orjson.dumps(pending))
        fields: dict[str, str | bytes] = {
            "user_id": user_id,
            "provider": session["provider"],
            "return_url": session["return_url"],
            "expires_at": repr(time.time() + VALID_FOR),
            "binding": _digest(binding),
            "pending": sealed,
        }
        await self._put(user_id, self.state_key(digest), fields)

    async def take_state(self, state: str) -> dict[str, Any]:
        key = self.state_key(_digest(state))
        flat = await self._take(keys=[key])
        found: dict[str, Any] = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        return found

    async def pending(self, user_id: str, state: str, sealed: bytes) -> dict[str, Any]:
        opened: dict[str, Any] = orjson.loads(
            await self._s.vault.decrypt(user_id, ("oauth-flow", _digest(state)), sealed)
        )
        return opened

    async def forget_user(self, user_id: str) -> None:
        redis = self._s.redis
        members = list(await redis.smembers(self.index_key(user_id)))
        # Global keys live in other hash slots than the index: delete them one by one (cluster-safe).
        for key in members:
            await redis.delete(key)
        await redis.delete(self.index_key(user_id))


def _flows(request: web.Request) -> Flows:
    return request.app[FLOWS]


FLOWS = web.AppKey("oauth_flows", Flows)


async def create_session(request: web.Request) -> web.Response:
    services, user_id = await admin_user(request)
    body = await read_json_object(request, limit=16 * 1024)
    provider = body.get("provider")
    if not isinstance(provider, str):
        raise BadRequest("unknown_provider", "provider must be google or microsoft")
    services.broker.provider(provider)
    return_url = validate_return_url(body.get("return_url"), services.settings)
    secret, expires_at = await _flows(request).new_session(user_id, provider, return_url)
    log.info("connect session created", extra={"user_id": user_id, "provider": provider})
    url = f"{services.settings.public_url}/oauth/connect/{secret}"
    return json_response({"url": url, "expires_at": iso(expires_at)})


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _outcome(provider: str, return_url: str, reason: str | None, cookie: str | None = None) -> web.Response:
    metrics.CONNECT_FLOWS.labels(provider if provider in PROVIDERS else "unknown", reason or "connected").inc()
    if reason is None:
        response = _redirect(with_query(return_url, status="connected", provider=provider))
    else:
        response = _redirect(with_query(return_url, status="error", provider=provider, reason=reason))
    if cookie:
        response.del_cookie(cookie, path="/oauth/callback/")
    return response


async def start(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    secret = request.match_info["session"]
    session = await _flows(request).spend_session(secret) if 20 <= len(secret) <= 100 else {}
    if not session:
        raise NotFound("connect_session_not_found", "unknown connect session")
    provider, return_url = session["provider"], session["return_url"]
    if session.get("used"):
        return _outcome(provider, return_url, SESSION_USED)
    if time.time() > float(session["expires_at"]):
        return _outcome(provider, return_url, EXPIRED_SESSION)
    state, binding = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    try:
        handler = services.broker.provider(provider)
        authorization = await services.broker.blocking(handler.authorize, state)
        await _flows(request).new_state(session, state, binding, authorization.pending)
    except GatewayError as exc:
        log.warning("connect flow could not start", extra={"provider": provider, "error": type(exc).__name__})
        return _outcome(provider, return_url, PROVIDER_ERROR if isinstance(exc, ProviderError) else INTERNAL_ERROR)
    response = _redirect(authorization.url)
    response.set_cookie(
        COOKIE_PREFIX + _digest(state)[:16],
        binding,
        max_age=VALID_FOR + KEPT_AFTER,
        path="/oauth/callback/",
        httponly=True,
        secure=True,
        samesite="Lax",
    )
    return response


async def callback(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise NotFound("not_found", "unknown provider")
    params = {k: v for k, v in request.query.items() if len(v) <= 4096}
    state = params.get("state", "")
    record = await _flows(request).take_state(state) if 20 <= len(state) <= 100 else {}
    if not record:
        # Nothing to redirect to: this state was never issued here, or it was already used.
        raise BadRequest(BAD_STATE, "unknown or already used state")
    return_url, user_id = record["return_url"].decode(), record["user_id"].decode()
    cookie = COOKIE_PREFIX + _digest(state)[:16]
    offered = request.cookies.get(cookie, "")
    if record["provider"].decode() != provider:
        return _outcome(provider, return_url, BAD_STATE, cookie)
    if time.time() > float(record["expires_at"]):
        return _outcome(provider, return_url, EXPIRED_SESSION, cookie)
    # Bindings are ASCII; a cookie with bytes that are not UTF-8 (lone surrogates) cannot be one.
    if not offered or not offered.isascii() or not hmac.compare_digest(_digest(offered), record["binding"].decode()):
        return _outcome(provider, return_url, BAD_STATE, cookie)
    if "error" in params:
        return _outcome(
            provider, return_url, ACCESS_DENIED if params["error"] == "access_denied" else PROVIDER_ERROR, cookie
        )
    if not params.get("code"):
        return _outcome(provider, return_url, PROVIDER_ERROR, cookie)
    try:
        pending = await _flows(request).pending(user_id, state, record["pending"])
        grant = await services.broker.blocking(services.broker.provider(provider).exchange, pending, params)
        await services.broker.connected(user_id, provider, grant)
    except ProviderError as exc:
        log.warning("code exchange failed", extra={"provider": provider, "error": str(exc)})
        return _outcome(provider, return_url, PROVIDER_ERROR, cookie)
    except GatewayError as exc:
        log.warning("connect flow failed", extra={"provider": provider, "error": type(exc).__name__})
        return _outcome(provider, return_url, INTERNAL_ERROR, cookie)
    return _outcome(provider, return_url, None, cookie)


def setup(app: web.Application) -> None:
    app.router.add_post("/admin/v1/users/{user_id}/connect", create_session)
    app.router.add_get("/oauth/connect/{session}", start)
    app.router.add_get("/oauth/callback/{provider}", callback)
