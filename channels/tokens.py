"""The one thing the mail channels need from the token broker: a fresh access token.

A `TokenSource` answers `(user_id, provider) -> access token`. It raises
`ReauthRequired` when the connection's grant is dead (the broker has then marked it
`reauth_required` and told the user's server) and `NotConnected` when there is no
connection; the channels then stop renewing until the user connects again, instead of
retrying a call that cannot work. Anything else (`ProviderUnavailable`…) is retried later.
"""

from __future__ import annotations

from typing import Protocol

from oauth.broker import Broker

MIN_TTL = 300
"""Long enough for one provider call plus its retries."""


class TokenSource(Protocol):
    async def __call__(self, user_id: str, provider: str) -> str: ...


class BrokerTokens:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def __call__(self, user_id: str, provider: str) -> str:
        lease = await self._broker.access_token(user_id, provider, min_ttl=MIN_TTL)
        return lease.access_token
