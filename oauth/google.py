"""Google: authorization code + PKCE through google-auth-oauthlib, refresh through google-auth,
the account address through the Gmail API (`users.getProfile`), revocation at the revoke URI.

Blocking methods run in the broker's thread pool.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import google_auth_httplib2
import httplib2
import oauthlib.oauth2
import requests
from google_auth_oauthlib.flow import Flow
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from foundation.config import Settings
from foundation.errors import ProviderError, ProviderUnavailable, ReauthRequired
from oauth.providers import Authorization, Grant, classify, tls_context
from oauth.store import Tokens

# Google adds earlier grants to the answer (include_granted_scopes=true); oauthlib would refuse a
# token whose scope differs from the request unless told that this is expected.
os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")

SCOPES = (
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://www.googleapis.com/auth/calendar",
)
TIMEOUT = 15.0


def _expiry(credentials: google.oauth2.credentials.Credentials) -> float:
    expiry: dt.datetime | None = credentials.expiry
    if expiry is None:
        return time.time() + 3600
    return expiry.replace(tzinfo=dt.UTC).timestamp()


class Google:
    name = "google"

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        assert settings.google_client_id
        assert settings.google_client_secret
        self._client_id = settings.google_client_id
        self._secret = settings.google_client_secret
        self._auth_uri = settings.google_auth_uri
        self._token_uri = settings.google_token_uri
        self._revoke_uri = settings.google_revoke_uri
        self._gmail = settings.gmail_api_url.rstrip("/") + "/"
        self._redirect_uri = f"{settings.public_url}/oauth/callback/google"
        self._session = session
        self._tls = tls_context()

    def _flow(self, code_verifier: str | None = None) -> Flow:
        config = {
            "web": {
                "client_id": self._client_id,
                "client_secret": self._secret,
                "auth_uri": self._auth_uri,
                "token_uri": self._token_uri,
            }
        }
        return Flow.from_client_config(
            config,
            scopes=list(SCOPES),
            redirect_uri=self._redirect_uri,
            code_verifier=code_verifier,
            autogenerate_code_verifier=code_verifier is None,
        )

    def authorize(self, state: str, login_hint: str | None = None) -> Authorization:
        flow = self._flow()
        hint = {"login_hint": login_hint} if login_hint else {}
        url, _ = flow.authorization_url(
            state=state, access_type="offline", prompt="consent", include_granted_scopes="true", **hint
        )
        return Authorization(url=url, pending={"code_verifier": flow.code_verifier})

    def exchange(self, pending: dict[str, Any], params: dict[str, str]) -> Grant:
        flow = self._flow(pending["code_verifier"])
        try:
            # include_client_id: client_secret_post, like google-auth's own refresh requests.
            flow.fetch_token(code=params.get("code", ""), include_client_id=True, timeout=TIMEOUT)
        except oauthlib.oauth2.OAuth2Error as exc:
            raise classify(self.name, exc.error, status=exc.status_code) from None
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"google token endpoint unreachable ({type(exc).__name__})") from None
        finally:
            flow.oauth2session.close()
        credentials = flow.credentials
        tokens = Tokens(
            access_token=credentials.token,
            expires_at=_expiry(credentials),
            refresh_token=credentials.refresh_token,
            scopes=tuple(credentials.granted_scopes or flow.oauth2session.token.get("scope", "").split() or SCOPES),
        )
        return Grant(account=self._profile_address(tokens.access_token), tokens=tokens)

    def _profile_address(self, access_token: str) -> str:
        credentials = google.oauth2.credentials.Credentials(token=access_token)
        ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None
        http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=TIMEOUT, ca_certs=ca_certs))
        try:
            gmail = build(
                "gmail", "v1", http=http, static_discovery=True, cache_discovery=False,
                client_options={"api_endpoint": self._gmail},
            )  # fmt: skip
            profile: dict[str, Any] = gmail.users().getProfile(userId="me").execute(num_retries=2)
        except HttpError as exc:
            status = int(exc.resp.status)
            if status >= 500 or status == 429:
                raise ProviderUnavailable(f"gmail getProfile answered {status}") from None
            raise ProviderError(f"gmail getProfile answered {status}") from None
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise ProviderUnavailable(f"gmail unreachable ({type(exc).__name__})") from None
        finally:
            http.close()
        address = profile.get("emailAddress")
        if not isinstance(address, str) or "@" not in address:
            raise ProviderError("gmail getProfile returned no address")
        return address

    def refresh(self, tokens: Tokens) -> Tokens:
        if not tokens.refresh_token:
            raise ReauthRequired(self.name, "no_refresh_token")
        credentials = google.oauth2.credentials.Credentials(
            token=None,
            refresh_token=tokens.refresh_token,
            token_uri=self._token_uri,
            client_id=self._client_id,
            client_secret=self._secret,
        )
        session = requests.Session()
        try:
            credentials.refresh(google.auth.transport.requests.Request(session))
        except google.auth.exceptions.RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            error = data.get("error") if isinstance(data.get("error"), str) else None
            if error is None and getattr(exc, "retryable", False):
                raise ProviderUnavailable("google token endpoint unavailable") from None
            raise classify(self.name, error, status=503 if getattr(exc, "retryable", False) else None) from None
        except google.auth.exceptions.TransportError as exc:
            raise ProviderUnavailable(f"google token endpoint unreachable ({type(exc).__name__})") from None
        finally:
            session.close()
        return Tokens(
            access_token=str(credentials.token),
            expires_at=_expiry(credentials),
            refresh_token=credentials.refresh_token or tokens.refresh_token,
            scopes=tuple(credentials.granted_scopes or tokens.scopes),
        )

    async def revoke(self, tokens: Tokens) -> None:
        token = tokens.refresh_token or tokens.access_token
        # Google reads `token`; RFC 7009 servers also want the client authenticated.
        form = {"token": token, "client_id": self._client_id, "client_secret": self._secret}
        try:
            async with self._session.post(
                self._revoke_uri, data=form, ssl=self._tls, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp:
                if resp.status < 300:
                    return
                body = await resp.json(content_type=None) if resp.content_type == "application/json" else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderUnavailable(f"google revoke endpoint unreachable ({type(exc).__name__})") from None
        error = body.get("error") if isinstance(body, dict) else None
        if resp.status == 400 and error in ("invalid_token", "invalid_request"):
            return  # already revoked or expired: the grant is gone, which is what was asked
        raise classify(self.name, error if isinstance(error, str) else None, status=resp.status)
