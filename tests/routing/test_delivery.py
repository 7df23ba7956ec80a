from __future__ import annotations

import asyncio

from foundation.types import Event
from routing.handoff import Item
from routing.transactions import MAX_TXN_BYTES
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway


def ev(n: int, channel: str = "telegram") -> Item:
    return Item(Event("telegram.update", "telegram", {"update_id": n, "text": f"hello {n}"}), dedup=str(n))


async def test_handed_over_events_arrive_sealed_signed_and_in_order(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "alice")
    for n in range(5):
        assert await gateway.services.handoff("alice", [ev(n)], dedup_scope="tg") == 1
    await dedicated.wait_for(lambda: len(dedicated.events("alice")) == 5)
    events = dedicated.events("alice")
    assert [e["payload"]["update_id"] for e in events] == [0, 1, 2, 3, 4]
    assert all(e["type"] == "telegram.update" and e["channel"] == "telegram" for e in events)
    assert all(e["id"].startswith("evt_") and e["received_at"].endswith("Z") for e in events)


async def test_repeated_dedup_id_is_queued_once(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "bob")
    dedicated.mode["bob"] = "down"
    assert await gateway.services.handoff("bob", [ev(7)], dedup_scope="tg") == 1
    assert await gateway.services.handoff("bob", [ev(7)], dedup_scope="tg") == 0
    assert await gateway.services.redis.xlen(gateway.services.keys.queue("bob")) == 1


async def test_down_server_gets_same_txn_again_then_everything_after_ping(gateway: Gateway, dedicated: DedicatedServer):
    body = await gateway.create_user(dedicated, "carol")
    dedicated.mode["carol"] = "down"
    await gateway.services.handoff("carol", [ev(1), ev(2)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)
    dedicated.mode["carol"] = "ok"
    resp = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {body['server_token']}"})
    assert resp.status == 200
    await dedicated.wait_for(lambda: len(dedicated.received) == 1, timeout=5)
    first_txn = dedicated.attempts[0][1]
    assert dedicated.received[0].txn_id == first_txn
    assert [e["payload"]["update_id"] for e in dedicated.events("carol")] == [1, 2]


async def test_batches_hold_at_most_100_events(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "dave")
    dedicated.mode["dave"] = "down"
    await gateway.services.handoff("dave", [ev(n) for n in range(250)], dedup_scope="tg")
    dedicated.mode["dave"] = "ok"
    await gateway.services.handoff.schedule("dave", now=True)
    await dedicated.wait_for(lambda: len(dedicated.events("dave")) == 250, timeout=10)
    sizes = [len(r.body["events"]) for r in dedicated.received]
    assert max(sizes) <= 100
    assert [e["payload"]["update_id"] for e in dedicated.events("dave")] == list(range(250))


async def test_a_transaction_body_never_exceeds_the_documented_limit(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "erin")
    dedicated.mode["erin"] = "down"
    # Twelve events of ~0.7 MB once sealed: about 8 MB held, more than one body can carry. (Six
    # fit in one: two bodies when all are queued before the first attempt, more when an attempt
    # began earlier, fixing a smaller transaction.)
    for n in range(12):
        item = Item(Event("telegram.update", "telegram", {"update_id": n, "text": "x" * 500_000}), dedup=str(n))
        await gateway.services.handoff("erin", [item], dedup_scope="tg")
    dedicated.mode["erin"] = "ok"
    await gateway.services.handoff.schedule("erin", now=True)
    await dedicated.wait_for(lambda: len(dedicated.events("erin")) == 12, timeout=20)
    delivered = {r.txn_id for r in dedicated.received}
    sizes = [len(body) for txn, bodies in dedicated.bodies.items() if txn in delivered for body in bodies]
    assert len(sizes) >= 2
    assert max(sizes) <= MAX_TXN_BYTES
    assert [e["payload"]["update_id"] for e in dedicated.events("erin")] == list(range(12))


async def test_hanging_server_does_not_delay_another_user(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "slow")
    await gateway.create_user(dedicated, "fast")
    dedicated.mode["slow"] = "hang"
    await gateway.services.handoff("slow", [ev(1)], dedup_scope="tg")
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await gateway.services.handoff("fast", [ev(2)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.events("fast")) == 1, timeout=5)
    assert loop.time() - started < 1.0
