"""The connect flow (contract §2, §7, §9.5): admin URL → browser binding → provider → callback.

1. `POST /admin/v1/users/{id}/connect` creates a one-use session valid 15 minutes, optionally
   naming the `expected_account` that must sign in.
2. `GET /oauth/connect/{session}` spends it, sets an HttpOnly, Secure, SameSite=Lax cookie
   binding this browser to a fresh `state`, and redirects to the provider (PKCE S256, and the
   expected account as `login_hint`).
3. `GET /oauth/callback/{provider}` checks the cookie against the state and only then spends
   the state (single use): a stranger who learned the state cannot cancel the user's flow. It
   exchanges the code and stores the grant through the broker, or, when another account than
   the expected one signed in, revokes the grant and stores nothing. It redirects to the
   `return_url` with `status=connected` or `status=error&reason=<code>`.

Sessions and states are global records named by the SHA-256 of their secret (the secret itself
is never stored), kept an hour past their validity so that a late browser still gets a proper
`expired_session` redirect. The provider's pending flow (PKCE verifier, msal's flow dict) and
the expected account are encrypted under the user's data key. Every record is listed in the
user's `oauth:flows` set so erasure can remove them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from aiohttp import web

from foundation import metrics
from foundation.clock import iso
from foundation.config import Settings, origin_of
from foundation.errors import BadRequest, GatewayError, NotFound, ProviderError, StorageError
from foundation.http import json_response, read_json_object
from oauth.broker import BROKER
from oauth.store import PROVIDERS
from routing.access import admin_user
from routing.services import Services

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
ACCOUNT_MISMATCH = "account_mismatch"

# An address as providers report it: something@somewhere, no spaces or controls, RFC 5321's length.
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,189}$")

# KEYS[1]: a session record. Returns its fields and marks it used; the caller sees `used` as it was.
_SPEND = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then redis.call('HSET', KEYS[1], 'used', '1') end
return fields
"""

# KEYS[1]: a state record. ARGV[1]: the digest of the binding the browser offered (already
# compared in constant time). Deletes the state only for its own browser: good for one callback.
_TAKE = """
if redis.call('HGET', KEYS[1], 'binding') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_return_url(value: Any, settings: Settings) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise BadRequest("invalid_return_url", "return_url must be an absolute URL")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
        raise BadRequest("invalid_return_url", "return_url must be an absolute https:// URL")
    if origin_of(value) not in settings.allowed_return_origins:
        raise BadRequest("invalid_return_url", "return_url is outside ALLY_ALLOWED_RETURN_ORIGINS")
    return value


def validate_expected_account(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise BadRequest("invalid_expected_account", "expected_account must be an email address")
    return value


def same_account(signed_in: str, expected: str) -> bool:
    return signed_in.strip().casefold() == expected.strip().casefold()


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


class Flows:
    """The Redis side of sessions and states."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._spend = services.redis.register_script(_SPEND)
        self._take = services.redis.register_script(_TAKE)

    def session_key(self, digest: str) -> str:
        return self._services.keys.global_key(f"oauth:connect:{digest}")

    def state_key(self, digest: str) -> str:
        return self._services.keys.global_key(f"oauth:state:{digest}")

    def index_key(self, user_id: str) -> str:
        return self._services.keys.user_key(user_id, "oauth:flows")

    async def _put(self, user_id: str, key: str, fields: dict[str, str | bytes]) -> None:
        redis = self._services.redis
        await redis.hset(key, mapping=fields)
        await redis.expire(key, VALID_FOR + KEPT_AFTER)
        await redis.sadd(self.index_key(user_id), key)
        await redis.expire(self.index_key(user_id), VALID_FOR + KEPT_AFTER)

    async def new_session(
        self, user_id: str, provider: str, return_url: str, expected: str | None = None
    ) -> tuple[str, float]:
        secret = secrets.token_urlsafe(32)
        digest = _digest(secret)
        expires_at = time.time() + VALID_FOR
        fields: dict[str, str | bytes] = {
            "user_id": user_id,
            "provider": provider,
            "return_url": return_url,
            "expires_at": repr(expires_at),
        }
        if expected is not None:
            fields["expected"] = await self._services.vault.encrypt(
                user_id, ("oauth-session", digest), expected.encode()
            )
        await self._put(user_id, self.session_key(digest), fields)
        return secret, expires_at

    async def spend_session(self, secret: str) -> dict[str, bytes]:
        """The session's fields (`used` as it was before this call); marks it used."""
        flat = await self._spend(keys=[self.session_key(_digest(secret))])
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    async def expected_account(self, user_id: str, secret: str, sealed: bytes | None) -> str | None:
        if not sealed:
            return None
        return (await self._services.vault.decrypt(user_id, ("oauth-session", _digest(secret)), sealed)).decode()

    async def new_state(
        self, session: dict[str, str], state: str, binding: str, pending: dict[str, Any], expected: str | None
    ) -> None:
        user_id, digest = session["user_id"], _digest(state)
        sealed = await self._services.vault.encrypt(user_id, ("oauth-flow", digest), orjson.dumps(pending))
        fields: dict[str, str | bytes] = {
            "user_id": user_id,
            "provider": session["provider"],
            "return_url": session["return_url"],
            "expires_at": repr(time.time() + VALID_FOR),
            "binding": _digest(binding),
            "pending": sealed,
        }
        if expected is not None:
            fields["expected"] = await self._services.vault.encrypt(
                user_id, ("oauth-expected", digest), expected.encode()
            )
        await self._put(user_id, self.state_key(digest), fields)

    async def state(self, state: str) -> dict[str, bytes]:
        """The state's record, left in place (empty when unknown or spent)."""
        raw = await self._services.redis.hgetall(self.state_key(_digest(state)))
        return {k.decode(): v for k, v in raw.items()}

    async def take_state(self, state: str, binding: str) -> bool:
        """Spend the state for the browser holding `binding`; False if it is gone meanwhile."""
        return bool(await self._take(keys=[self.state_key(_digest(state))], args=[_digest(binding)]))

    def bound(self, record: dict[str, bytes], offered: str) -> bool:
        """Whether the cookie the browser offered is the one that state was bound to."""
        # Bindings are ASCII; a cookie with bytes that are not UTF-8 (lone surrogates) cannot be one.
        if not offered or not offered.isascii():
            return False
        return hmac.compare_digest(_digest(offered), record.get("binding", b"").decode())

    async def pending(self, user_id: str, state: str, record: dict[str, bytes]) -> tuple[dict[str, Any], str | None]:
        """The provider's pending flow and the expected account, if any."""
        digest = _digest(state)
        opened: dict[str, Any] = orjson.loads(
            await self._services.vault.decrypt(user_id, ("oauth-flow", digest), record["pending"])
        )
        sealed = record.get("expected")
        if not sealed:
            return opened, None
        return opened, (await self._services.vault.decrypt(user_id, ("oauth-expected", digest), sealed)).decode()

    async def forget_user(self, user_id: str) -> None:
        redis = self._services.redis
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
    request.app[BROKER].provider(provider)
    return_url = validate_return_url(body.get("return_url"), services.settings)
    expected = validate_expected_account(body.get("expected_account"))
    secret, expires_at = await _flows(request).new_session(user_id, provider, return_url, expected)
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
    broker = request.app[BROKER]
    secret = request.match_info["session"]
    flows = _flows(request)
    raw = await flows.spend_session(secret) if 20 <= len(secret) <= 100 else {}
    if not raw:
        raise NotFound("connect_session_not_found", "unknown connect session")
    session = {k: v.decode() for k, v in raw.items() if k != "expected"}
    provider, return_url = session["provider"], session["return_url"]
    if session.get("used"):
        return _outcome(provider, return_url, SESSION_USED)
    if time.time() > float(session["expires_at"]):
        return _outcome(provider, return_url, EXPIRED_SESSION)
    state, binding = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    try:
        expected = await flows.expected_account(session["user_id"], secret, raw.get("expected"))
        handler = broker.provider(provider)
        authorization = await broker.blocking(handler.authorize, state, expected)
        await flows.new_state(session, state, binding, authorization.pending, expected)
    except StorageError:
        raise  # 503 storage_unavailable, like every route (foundation.http)
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
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise NotFound("not_found", "unknown provider")
    params = {k: v for k, v in request.query.items() if len(v) <= 4096}
    state = params.get("state", "")
    flows = _flows(request)
    record = await flows.state(state) if 20 <= len(state) <= 100 else {}
    if not record:
        # Nothing to redirect to: this state was never issued here, or it was already used.
        raise BadRequest(BAD_STATE, "unknown or already used state")
    return_url, user_id = record["return_url"].decode(), record["user_id"].decode()
    cookie = COOKIE_PREFIX + _digest(state)[:16]
    offered = request.cookies.get(cookie, "")
    if not flows.bound(record, offered):
        # Not the browser that started this flow: refused, and the state stays good for the one that did.
        return _outcome(provider, return_url, BAD_STATE)
    if not await flows.take_state(state, offered):
        raise BadRequest(BAD_STATE, "unknown or already used state")
    if record["provider"].decode() != provider:
        return _outcome(provider, return_url, BAD_STATE, cookie)
    if time.time() > float(record["expires_at"]):
        return _outcome(provider, return_url, EXPIRED_SESSION, cookie)
    if "error" in params:
        return _outcome(
            provider, return_url, ACCESS_DENIED if params["error"] == "access_denied" else PROVIDER_ERROR, cookie
        )
    if not params.get("code"):
        return _outcome(provider, return_url, PROVIDER_ERROR, cookie)
    return _outcome(provider, return_url, await _finish(request, user_id, provider, state, record, params), cookie)


async def _finish(
    request: web.Request, user_id: str, provider: str, state: str, record: dict[str, bytes], params: dict[str, str]
) -> str | None:
    """Exchange the code and store the grant; the reason code when that did not happen."""
    broker = request.app[BROKER]
    try:
        pending, expected = await _flows(request).pending(user_id, state, record)
        grant = await broker.blocking(broker.provider(provider).exchange, pending, params)
        if expected is not None and not same_account(grant.account, expected):
            # Someone else signed in (a forwarded link): their grant is given back, never stored.
            log.warning("connect flow signed in another account than expected", extra={"provider": provider})
            await broker.refuse(provider, grant)
            return ACCOUNT_MISMATCH
        await broker.connected(user_id, provider, grant)
    except ProviderError as exc:
        log.warning("code exchange failed", extra={"provider": provider, "error": str(exc)})
        return PROVIDER_ERROR
    except StorageError:
        raise  # 503 storage_unavailable, like every route (foundation.http)
    except GatewayError as exc:
        log.warning("connect flow failed", extra={"provider": provider, "error": type(exc).__name__})
        return INTERNAL_ERROR
    return None


ROUTES = (
    web.post("/admin/v1/users/{user_id}/connect", create_session),
    web.get("/oauth/connect/{session}", start),
    web.get("/oauth/callback/{provider}", callback),
)
