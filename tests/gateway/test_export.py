from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jsonschema

from ai.metering import Tokens
from ai.relay import RELAY
from foundation.config import Settings
from foundation.logs import scrub
from foundation.types import Event
from routing.handoff import Item
from routing.hooks import Hooks
from routing.plugin import Plugin
from tests.support.dedicated import DedicatedServer
from tests.support.export import validate
from tests.support.gateway import Gateway, serve


def encodings(raw: bytes) -> list[str]:
    """Forms a stored binary secret could take in a JSON document."""
    return [
        raw.hex(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


async def test_export_matches_its_schema_and_holds_no_secret(gateway: Gateway, dedicated: DedicatedServer):
    services = gateway.services
    created = await gateway.create_user(dedicated, "exported")
    dedicated.mode["exported"] = "down"
    items = [Item(Event("telegram.update", "telegram", {"update_id": n}), dedup=str(n)) for n in range(3)]
    await services.handoff("exported", items, dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)
    meter = gateway.client.app[RELAY].meter
    await meter.record("exported", "anthropic", "claude-sonnet-4-5", Tokens(input=1200, output=340))

    resp = await gateway.admin("GET", "/admin/v1/users/exported/export")
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    assert document["account"]["user_id"] == "exported"
    assert document["server"]["url"] == dedicated.url("exported")
    assert document["queue"]["pending"] == 3
    assert document["queue"]["oldest_age_seconds"] >= 0
    assert document["counters"] == {"events_in": 3, "events_out": 0}
    assert document["server"]["health"] == "failing"
    assert document["server"]["last_failure"] == "http_503"
    [month] = document["ai"]["months"]
    counts = {"input_tokens": 1200, "output_tokens": 340, "requests": 1}
    assert month["models"]["claude-sonnet-4-5"] == {"provider": "anthropic", **counts}
    assert month["providers"] == {"anthropic": counts}

    text = json.dumps(document)
    record = await services.redis.hgetall(services.keys.user("exported"))
    secrets = [created["server_token"], created["webhook_secret"], created["webhook_secret"].removeprefix("whsec_")]
    secrets.append(record[b"token_hash"].decode())
    for raw in (record[b"secret"], record[b"dek"]):
        secrets += encodings(raw)
    for key in gateway.settings.master_keys:
        secrets += encodings(key.key)
    for secret in secrets:
        assert secret not in text
    # Nothing in it is even shaped like a token (the public key is public, and random by nature).
    shown = json.dumps({**document, "server": {**document["server"], "public_key": None}})
    assert scrub(shown) == shown


async def test_export_of_unknown_user_is_404_and_needs_the_admin_token(gateway: Gateway):
    assert (await gateway.admin("GET", "/admin/v1/users/ghost/export")).status == 404
    assert (await gateway.client.get("/admin/v1/users/ghost/export")).status == 401
    assert (await gateway.admin("GET", "/admin/v1/users/bad%20id/export")).status == 400


async def test_export_of_a_user_being_erased_is_404(settings: Settings, dedicated: DedicatedServer):
    # A provider that has not answered yet keeps the erasure in its hooks step.
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_provider(_user_id: str) -> None:
        entered.set()
        await release.wait()

    slow = Plugin(name="test-slow-provider", hooks=Hooks(erase={"slow": slow_provider}))
    async with serve(settings, extra=[slow]) as gateway:
        await gateway.create_user(dedicated, "leaving")
        assert (await gateway.admin("GET", "/admin/v1/users/leaving/export")).status == 200
        try:
            assert (await gateway.admin("DELETE", "/admin/v1/users/leaving")).status == 202
            await asyncio.wait_for(entered.wait(), 10)
            status = await (await gateway.admin("GET", "/admin/v1/users/leaving")).json()
            assert status["status"] == "erasing"
            resp = await gateway.admin("GET", "/admin/v1/users/leaving/export")
            assert resp.status == 404
            assert (await resp.json())["error"] == "user_not_found"
        finally:
            release.set()


def test_schema_rejects_a_document_with_an_undocumented_part():
    document: dict[str, Any] = {
        "schema": "ally-gateway/export/v1",
        "exported_at": "2026-11-27T10:00:00.123Z",
        "account": {
            "user_id": "u1",
            "created_at": "2026-11-27T10:00:00.123Z",
            "updated_at": "2026-11-27T10:00:00.123Z",
        },
        "server": {
            "url": "https://srv.example",
            "public_key": "A" * 43,
            "health": "unknown",
            "last_success_at": None,
            "last_failure_at": None,
            "last_failure": None,
        },
        "sealing": {"suite": "X25519", "kid": "A" * 11, "held_for_older_keys": 0, "older_keys": []},
        "queue": {"pending": 0, "oldest_received_at": None, "oldest_age_seconds": None, "in_flight_events": 0},
        "counters": {"events_in": 0, "events_out": 0},
    }
    validate(document)
    for bad in ({**document, "tokens": {}}, {**document, "server": {**document["server"], "secret": "x"}}):
        try:
            validate(bad)
        except jsonschema.ValidationError:
            continue
        raise AssertionError("an undocumented field passed the schema")
