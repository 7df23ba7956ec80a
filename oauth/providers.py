"""What the connect flow and the broker need from a provider: four calls, all translated errors.

`authorize`, `exchange` and `refresh` drive blocking SDKs (google-auth, msal) and are called
through the broker's bounded thread pool, never on the event loop. Every provider failure
leaves as `ReauthRequired` (the grant is dead), `ProviderUnavailable` (transient: worth a
retry) or `ProviderError` (anything else); error bodies are reduced to their `error` code.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from foundation.errors import ProviderError, ProviderUnavailable, ReauthRequired
from foundation.tls import client_context
from oauth.store import Tokens

# Token-endpoint `error` codes that mean the refresh token will never work again.
DEAD_GRANT = frozenset({"invalid_grant", "invalid_rapt", "admin_policy_enforced", "interaction_required"})
# Codes a token endpoint uses for trouble on its side (RFC 6749 §4.1.2.1 and common practice).
TRANSIENT = frozenset({"server_error", "temporarily_unavailable"})


@dataclass(frozen=True, slots=True)
class Authorization:
    url: str
    pending: dict[str, Any]
    """Kept server-side (encrypted) until the callback: the PKCE verifier or msal's flow dict."""


@dataclass(frozen=True, slots=True)
class Grant:
    account: str
    tokens: Tokens


class Provider(Protocol):
    name: str

    def authorize(self, state: str, login_hint: str | None = None) -> Authorization:
        """The provider URL to send the browser to (redirecting to `{ALLY_PUBLIC_URL}/oauth/callback/<name>`),
        suggesting the account `login_hint` when one is expected."""

    def exchange(self, pending: dict[str, Any], params: dict[str, str]) -> Grant: ...

    def refresh(self, tokens: Tokens) -> Tokens: ...

    async def revoke(self, tokens: Tokens) -> None:
        """Revoke the grant at the provider; providers without a revocation endpoint do nothing."""


def classify(provider: str, error: str | None, *, status: int | None = None) -> ProviderError:
    """The gateway error for a token-endpoint answer, from its `error` code and HTTP status only."""
    code = (error or "").strip()[:64] or "unknown_error"
    if code in DEAD_GRANT:
        return ReauthRequired(provider, code)
    if code in TRANSIENT or (status is not None and (status >= 500 or status in (408, 429))):
        return ProviderUnavailable(f"{provider} token endpoint unavailable ({code})")
    return ProviderError(f"{provider} token endpoint refused ({code})")


def tls_context() -> ssl.SSLContext:
    return client_context()
