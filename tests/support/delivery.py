"""Events to hand off and the server's ping, for delivery tests."""

from __future__ import annotations

from foundation.types import Event
from routing.handoff import Item
from tests.support.gateway import Gateway


def ev(n: int, text: str = "") -> Item:
    return Item(Event("telegram.update", "telegram", {"update_id": n, "text": text or f"hello {n}"}), dedup=str(n))


async def ping(gateway: Gateway, token: str) -> None:
    resp = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
