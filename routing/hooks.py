"""What the plugins add to the core, by name: per-user hooks and background loops.

Each plugin declares its own when the app is built (`routing/plugin.py`); the composition root
merges them, refusing a name given twice, and the merged value is what the services hold from
start-up to the end. Every mapping is read-only and in order of name, so the order in which
plugins are listed changes nothing: not a user's status document, not the order of erasure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

from routing.erasure import EraseHook
from routing.outage import ExpiredHook

UserHook = Callable[[str], Awaitable[dict[str, Any]]]
ConnectionHook = Callable[[str, str, str], Awaitable[None]]
"""Told `(user_id, provider, account)`."""
Loop = Callable[[], Awaitable[None]]

T = TypeVar("T")


def frozen(entries: Mapping[str, T]) -> Mapping[str, T]:
    """A read-only copy, in order of name."""
    return MappingProxyType(dict(sorted(entries.items())))


def merged(kind: str, parts: Iterable[Mapping[str, T]]) -> Mapping[str, T]:
    """Every part's entries in one read-only mapping; a name two parts give is refused."""
    found: dict[str, T] = {}
    for part in parts:
        for name, entry in part.items():
            if name in found:
                raise ValueError(f"two plugins give the {kind} {name!r}")
            found[name] = entry
    return frozen(found)


@dataclass(frozen=True)
class Hooks:
    """Per-user contributions of plugins, each under its own name."""

    status: Mapping[str, UserHook] = field(default_factory=dict)
    """A part of `GET /admin/v1/users/{id}`."""
    export: Mapping[str, UserHook] = field(default_factory=dict)
    """A part of the user's export document."""
    erase: Mapping[str, EraseHook] = field(default_factory=dict)
    """Run by erasure before the user's keys are deleted (`routing/erasure.py`)."""
    link: Mapping[str, UserHook] = field(default_factory=dict)
    """Channels that link a chat to a user: a one-use link (`{"url", "code", "expires_at"}`)."""
    expired: Mapping[str, ExpiredHook] = field(default_factory=dict)
    """By channel: told where a user's held events that expired came from (`routing/outage.py`)."""
    connected: Mapping[str, ConnectionHook] = field(default_factory=dict)
    """Told by the OAuth broker when a user connects a provider account."""
    disconnected: Mapping[str, ConnectionHook] = field(default_factory=dict)
    """Told by the OAuth broker when a connection ends (disconnect, account switch, erasure),
    while its tokens still open."""

    def __post_init__(self) -> None:
        for kind in fields(self):
            object.__setattr__(self, kind.name, frozen(getattr(self, kind.name)))

    @classmethod
    def merge(cls, parts: Iterable[Hooks]) -> Hooks:
        """Every part's hooks together; a name two parts give for one kind is refused."""
        every = list(parts)
        kinds = {kind.name: merged(f"{kind.name} hook", (getattr(p, kind.name) for p in every)) for kind in fields(cls)}
        return cls(**kinds)
