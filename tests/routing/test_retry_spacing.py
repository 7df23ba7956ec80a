"""No path attempts a transaction before its Retry-After or backoff has passed."""

from __future__ import annotations

from foundation.types import Event
from routing.handoff import Item
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway


def attempt_times(server: DedicatedServer, user_id: str) -> list[float]:
    return [t for u, _txn, t in server.attempt_times if u == user_id]


async def test_a_ping_before_a_new_transaction_does_not_make_its_first_retry_immediate(
    gateway: Gateway, dedicated: DedicatedServer
):
    # A server restarted with rotated credentials pings, as docs/server-api.md asks; its queue is
    # empty then. The next event opens a new transaction, which the still-sick server refuses
    # with Retry-After: the retry must wait for it, not follow the refusal at once.
    await gateway.create_user(dedicated, "erin")
    rotated = await gateway.admin("POST", "/admin/v1/users/erin/credentials/rotate")
    token = (await rotated.json())["server_token"]
    dedicated.mode["erin"] = "down"
    dedicated.retry_after = "1"
    ping = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {token}"})
    assert ping.status == 200
    event = Event("telegram.update", "telegram", {"update_id": 1})
    assert await gateway.services.handoff("erin", [Item(event, dedup="1")], dedup_scope="tg") == 1
    await dedicated.wait_for(lambda: len(attempt_times(dedicated, "erin")) >= 2, timeout=10)
    first, second = attempt_times(dedicated, "erin")[:2]
    assert second - first >= 0.95


async def test_a_ping_during_an_attempt_still_retries_as_soon_as_it_fails(gateway: Gateway, dedicated: DedicatedServer):
    body = await gateway.create_user(dedicated, "fern")
    dedicated.mode["fern"] = "slow"
    dedicated.delay = 0.5
    event = Event("telegram.update", "telegram", {"update_id": 1})
    await gateway.services.handoff("fern", [Item(event, dedup="1")], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(attempt_times(dedicated, "fern")) == 1)
    # The attempt is still open (the server answers after 0.5 s, then with a failure); the server
    # says it is back meanwhile: the next attempt follows the failure, not a backoff.
    dedicated.mode["fern"] = "error"
    ping = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {body['server_token']}"})
    assert ping.status == 200
    dedicated.mode["fern"] = "ok"
    await dedicated.wait_for(lambda: len(dedicated.events("fern")) == 1, timeout=5)
