"""The shared vocabulary of the gateway."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, NewType

UserId = NewType("UserId", str)
Channel = Literal["telegram", "gmail", "outlook", "gateway", "connection"]
JSON = dict[str, Any]

USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLES = ("all", "web", "worker")
"""What `ally-gateway serve --role` runs: everything, the HTTP side, or the background loops."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event on its way to a user's server; `payload` is plaintext and lives only in memory."""

    type: str
    channel: Channel
    payload: JSON


@dataclass(frozen=True, slots=True)
class SealedEvent:
    """What is queued and delivered: the envelope the contract shows, payload sealed."""

    id: str
    type: str
    channel: str
    received_at: str
    sealed: str
    kid: str
    """Names the server key `sealed` was sealed to (contract §9.6)."""

    def as_json(self) -> JSON:
        return {
            "id": self.id,
            "type": self.type,
            "channel": self.channel,
            "received_at": self.received_at,
            "kid": self.kid,
            "sealed": self.sealed,
        }
