"""Durable on more than one node (contract §9.9): a primary with a replica whose link is cut
(the replica stops following), the primary takes writes, then dies and the replica takes over. Every
event a provider got a 2xx for must arrive; the others were answered 503 (and are retried)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from foundation.config import Settings
from gateway.app import create_app
from tests.support import ingress
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import make_settings, register_user
from tests.support.redis_servers import ReplicatedRedis

pytestmark = pytest.mark.slow


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[ReplicatedRedis]:
    servers = ReplicatedRedis.start(tmp_path / "redis")
    try:
        yield servers
    finally:
        servers.stop()


async def started(settings: Settings) -> TestClient[Any, Any]:
    # The stand-in provider webhook: 200 only once the event is stored.
    client = TestClient(TestServer(create_app(settings, extra=[ingress.PLUGIN]), port=0))
    await client.start_server()
    return client


async def send(client: TestClient[Any, Any], seqs: range, *, tries: int = 1) -> dict[int, int]:
    """Each update's last answer; like a provider, up to `tries` attempts until one is a 2xx."""
    answers: dict[int, int] = {}
    for seq in seqs:
        for _ in range(tries):
            answers[seq] = (await client.post("/test/ingress/u1", json={"seq": seq})).status
            if answers[seq] == 200:
                break
    return answers


@dataclasses.dataclass
class Outcome:
    answers: dict[int, int]
    arrived: list[int]


async def cut_replica_then_fail_over(
    tmp_path: Path, pair: ReplicatedRedis, dedicated: DedicatedServer, **overrides: Any
) -> Outcome:
    settings = make_settings(
        tmp_path, redis_url=pair.primary.url, ack_timeout_ms=200, delivery_lease=2.0, delivery_timeout=1.0, **overrides
    )
    dedicated.mode["u1"] = "down"  # the user's server is away: events wait in the queue
    client = await started(settings)
    try:
        credentials = await register_user(client, dedicated, "u1")
        # A WAIT may time out on a loaded machine while both nodes are fresh: retried, as a provider does.
        answers = await send(client, range(5), tries=20)
        pair.cut_link()  # the primary alone takes what follows
        answers |= await send(client, range(5, 10))
    finally:
        await client.close()
    pair.primary.stop(crash=True)
    pair.promote_replica()
    dedicated.mode["u1"] = "ok"
    client = await started(dataclasses.replace(settings, redis_url=pair.replica.url))
    try:
        # The server is back and says so, as a server does on start: the held events go now,
        # not when the retry the old primary scheduled (up to seconds away) comes round.
        ping = await client.post("/v1/ping", headers={"Authorization": f"Bearer {credentials['server_token']}"})
        assert ping.status == 200, await ping.text()

        def arrived() -> list[int]:
            return [e["payload"]["seq"] for e in dedicated.events("u1") if e["type"] == "telegram.update"]

        # Seq 0..4 were on the replica before the cut; whatever else arrives comes with them.
        await dedicated.wait_for(lambda: len(arrived()) >= 5, timeout=20)
        return Outcome(answers, arrived())
    finally:
        await client.close()


async def test_every_acknowledged_event_survives_the_primary_dying_with_its_replica_cut_off(
    tmp_path: Path, pair: ReplicatedRedis, dedicated: DedicatedServer
):
    outcome = await cut_replica_then_fail_over(tmp_path, pair, dedicated)
    assert set(outcome.answers.values()) <= {200, 503}
    assert [seq for seq, status in outcome.answers.items() if status == 200] == list(range(5))
    assert [seq for seq, status in outcome.answers.items() if status == 503] == list(range(5, 10))
    assert outcome.arrived == list(range(5))


async def test_without_waiting_for_replicas_the_cut_off_window_loses_acknowledged_events(
    tmp_path: Path, pair: ReplicatedRedis, dedicated: DedicatedServer
):
    """The control: ALLY_ACK_REPLICAS=0 acknowledges on the primary alone, and the failover loses those."""
    outcome = await cut_replica_then_fail_over(tmp_path, pair, dedicated, ack_replicas=0)
    assert set(outcome.answers.values()) == {200}
    assert outcome.arrived == list(range(5))
