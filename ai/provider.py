"""The seam a model provider plugs into: open a reply, read it, close it.

A provider turns one Messages request for one model into a `Reply` once the
answer's head has arrived, or raises `ModelCallFailed` (translated from its SDK or
transport), or `Untranslatable` before sending anything when it has no
equivalent for something the request uses. Replies are in Anthropic's format
whoever served them. The chain (`chain.py`) decides about retries and fallbacks; the relay
(`relay.py`) about what the caller sees. A new provider is one class with `open`
and `aclose`, named in `PROVIDERS` by `relay.py`; `ALLY_AI_FALLBACKS` entries of
the form `<provider>:<model>` pick it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from ai.request import MessagesRequest


class Reply(Protocol):
    """An answer whose status line was a success. Reading raises `ModelCallFailed` (whole body)
    or `StreamBroken` (chunks); `aclose` releases the connection and may be called twice."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Provider headers worth passing on to the caller (e.g. `request-id`)."""
        ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncGenerator[bytes, None]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str

    async def open(self, model: str, request: MessagesRequest) -> Reply:
        """Send the request for `model`; the reply's head has arrived when this returns."""
        ...

    async def aclose(self) -> None: ...
