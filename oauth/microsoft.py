"""Microsoft: msal's auth code flow (PKCE included) and silent refresh over a per-user token cache.

The serialized msal cache is part of the connection's sealed tokens: Microsoft rotates refresh
tokens on use, so the cache is written back after every refresh. The account address comes from
the ID token (`preferred_username` / `email`) or, failing that, Graph `/me`. Microsoft offers no
revocation endpoint for refresh tokens; disconnecting forgets them.

`ALLY_MICROSOFT_OIDC_AUTHORITY` switches msal to a generic OpenID Connect issuer (`oidc_authority`).
Blocking methods run in the broker's thread pool.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import msal
import msal.exceptions
import orjson
import requests

from foundation.config import Settings
from foundation.errors import ProviderError, ProviderUnavailable, ReauthRequired
from oauth.providers import Authorization, Grant, classify
from oauth.store import Tokens

SCOPES = (
    "https://graph.microsoft.com/User.Read",
    "https://graph.microsoft.com/Mail.ReadWrite",
    "https://graph.microsoft.com/Mail.Send",
    "https://graph.microsoft.com/Calendars.ReadWrite",
)
TIMEOUT = 15.0


def _scopes(result: dict[str, Any], fallback: tuple[str, ...]) -> tuple[str, ...]:
    scope = result.get("scope")
    if isinstance(scope, str):
        return tuple(scope.split())
    if isinstance(scope, list):
        return tuple(str(s) for s in scope)
    return fallback


# What a refresh needs of msal's cache: the account (to find its refresh token) and the refresh
# token itself. The access token is stored once, beside the cache, and the ID token was read at
# connect time; msal's own serialization keeps both again, pretty-printed: with Microsoft's usual
# token sizes its cache is 6.2 KB of a connection's 9.0 KB of token material, 2.0 KB cut down.
_CACHE_KEPT = ("Account", "RefreshToken", "AppMetadata")


def stored_cache(cache: msal.SerializableTokenCache) -> str:
    full: dict[str, Any] = orjson.loads(cache.serialize())
    return orjson.dumps({k: v for k, v in full.items() if k in _CACHE_KEPT}).decode()


class Microsoft:
    name = "microsoft"

    def __init__(self, settings: Settings) -> None:
        assert settings.microsoft_client_id
        assert settings.microsoft_client_secret
        self._client_id = settings.microsoft_client_id
        self._secret = settings.microsoft_client_secret
        self._authority = settings.microsoft_authority
        self._oidc_authority = settings.microsoft_oidc_authority
        self._graph = settings.graph_api_url.rstrip("/")
        self._redirect_uri = f"{settings.public_url}/oauth/callback/microsoft"

    def _verify(self) -> str | bool:
        return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or True

    def _app(
        self, session: requests.Session, cache: msal.SerializableTokenCache | None = None
    ) -> msal.ConfidentialClientApplication:
        where: dict[str, Any] = (
            {"oidc_authority": self._oidc_authority} if self._oidc_authority else {"authority": self._authority}
        )
        try:
            return msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._secret,
                token_cache=cache,
                # A fresh cache per call: msal keeps throttled error answers in it, which would
                # turn the broker's retries of a 5xx into replays of the cached failure.
                http_cache={},
                http_client=session,
                timeout=TIMEOUT,
                **where,
            )
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"microsoft authority unreachable ({type(exc).__name__})") from None
        except ValueError as exc:
            raise ProviderError("microsoft authority refused its discovery") from exc

    def authorize(self, state: str, login_hint: str | None = None) -> Authorization:
        with self._session() as session, warnings.catch_warnings():
            # msal recommends form_post, but a cross-site POST back would not carry the SameSite=Lax
            # cookie that binds the browser (contract §7); the code comes back in the query, once.
            # prompt=consent: OpenID Connect grants offline_access (a refresh token) only with it.
            warnings.filterwarnings("ignore", message="response_mode='form_post'", category=UserWarning)
            flow: dict[str, Any] = self._app(session).initiate_auth_code_flow(
                list(SCOPES), redirect_uri=self._redirect_uri, state=state, prompt="consent", login_hint=login_hint
            )
        return Authorization(url=flow["auth_uri"], pending={"flow": flow})

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self._verify()
        return session

    def exchange(self, pending: dict[str, Any], params: dict[str, str]) -> Grant:
        with self._session() as session:
            return self._exchange(session, pending, params)

    def _exchange(self, session: requests.Session, pending: dict[str, Any], params: dict[str, str]) -> Grant:
        cache = msal.SerializableTokenCache()
        app = self._app(session, cache)
        try:
            result = app.acquire_token_by_auth_code_flow(pending["flow"], params)
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"microsoft token endpoint unreachable ({type(exc).__name__})") from None
        except msal.exceptions.MsalServiceError:
            # msal raises this for answers it cannot read as OAuth errors (a 5xx page, for one).
            raise ProviderUnavailable("microsoft token endpoint answered an HTTP error") from None
        except ValueError:
            # msal's own state / flow checks: the answer does not belong to this flow.
            raise ProviderError("microsoft answer does not match the flow") from None
        if "access_token" not in result:
            raise classify(self.name, result.get("error"))
        tokens = Tokens(
            access_token=result["access_token"],
            expires_at=time.time() + float(result.get("expires_in", 3600)),
            refresh_token=result.get("refresh_token"),
            scopes=_scopes(result, SCOPES),
            msal_cache=stored_cache(cache),
        )
        return Grant(account=self._account(session, result, tokens.access_token), tokens=tokens)

    def _account(self, session: requests.Session, result: dict[str, Any], access_token: str) -> str:
        claims = result.get("id_token_claims") or {}
        for name in ("preferred_username", "email"):
            value = claims.get(name)
            if isinstance(value, str) and "@" in value:
                return value
        try:
            resp = session.get(
                f"{self._graph}/me",
                params={"$select": "mail,userPrincipalName"},
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=TIMEOUT,
            )
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"graph unreachable ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise (ProviderUnavailable if resp.status_code >= 500 else ProviderError)(
                f"graph /me answered {resp.status_code}"
            )
        me = resp.json()
        for name in ("mail", "userPrincipalName"):
            value = me.get(name)
            if isinstance(value, str) and "@" in value:
                return value
        raise ProviderError("graph /me returned no address")

    def refresh(self, tokens: Tokens) -> Tokens:
        with self._session() as session:
            return self._refresh(session, tokens)

    def _refresh(self, session: requests.Session, tokens: Tokens) -> Tokens:
        cache = msal.SerializableTokenCache()
        if tokens.msal_cache:
            cache.deserialize(tokens.msal_cache)
        app = self._app(session, cache)
        try:
            accounts = app.get_accounts()
            if accounts:
                result = app.acquire_token_silent_with_error(list(SCOPES), accounts[0], force_refresh=True)
            elif tokens.refresh_token:
                result = app.acquire_token_by_refresh_token(tokens.refresh_token, list(SCOPES))
            else:
                raise ReauthRequired(self.name, "no_refresh_token")
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"microsoft token endpoint unreachable ({type(exc).__name__})") from None
        except msal.exceptions.MsalServiceError:
            # msal raises this for answers it cannot read as OAuth errors (a 5xx page, for one).
            raise ProviderUnavailable("microsoft token endpoint answered an HTTP error") from None
        if not result:
            raise ReauthRequired(self.name, "no_refresh_token")
        if "access_token" not in result:
            raise classify(self.name, result.get("error"))
        return Tokens(
            access_token=result["access_token"],
            expires_at=time.time() + float(result.get("expires_in", 3600)),
            refresh_token=result.get("refresh_token") or tokens.refresh_token,
            scopes=_scopes(result, tokens.scopes),
            msal_cache=stored_cache(cache) if cache.has_state_changed else tokens.msal_cache,
        )

    async def revoke(self, tokens: Tokens) -> None:
        return None
