from __future__ import annotations

import orjson
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from foundation.types import Event
from routing import signing
from routing.handoff import Item
from tests.support.gateway import Gateway, random_public_key


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/admin/v1/users/bad%20id",
            {"server_url": "https://a.example", "server_public_key": "x"},
            400,
            "invalid_user_id",
        ),
        ("/admin/v1/users/" + "a" * 65, {"server_url": "https://a.example"}, 400, "invalid_user_id"),
        ("/admin/v1/users/u1", {"server_url": "ftp://a.example", "server_public_key": "k"}, 400, "invalid_server_url"),
        ("/admin/v1/users/u1", {"server_url": "http://a.example", "server_public_key": "k"}, 400, "invalid_server_url"),
        (
            "/admin/v1/users/u1",
            {"server_url": "https://a.example", "server_public_key": "AAAA"},
            400,
            "invalid_server_public_key",
        ),
        (
            "/admin/v1/users/u1",
            {"server_url": "https://a.example", "server_public_key": 5},
            400,
            "invalid_server_public_key",
        ),
        ("/admin/v1/users/u1", [1, 2], 400, "invalid_json"),
    ],
)
async def test_bad_input_is_a_4xx_json_error(gateway: Gateway, path, body, status, code):
    resp = await gateway.admin("PUT", path, json=body)
    assert resp.status == status
    assert (await resp.json())["error"] == code


async def test_malformed_json_and_missing_auth(gateway: Gateway):
    resp = await gateway.admin("PUT", "/admin/v1/users/u1", data=b"{not json")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    resp = await gateway.client.put("/admin/v1/users/u1", json={})
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await gateway.client.get("/admin/v1/users/u1", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
    assert resp.status == 401


async def test_create_then_update_shows_secrets_once(gateway: Gateway):
    body = {"server_url": "https://srv.example/base", "server_public_key": random_public_key()}
    first = await gateway.admin("PUT", "/admin/v1/users/u2", json=body)
    assert first.status == 201
    created = await first.json()
    assert created["server_token"].startswith("ast.u2.") and created["webhook_secret"].startswith("whsec_")
    second = await gateway.admin("PUT", "/admin/v1/users/u2", json={**body, "server_url": "https://other.example"})
    assert second.status == 200
    assert "server_token" not in await second.json()
    status = await (await gateway.admin("GET", "/admin/v1/users/u2")).json()
    assert status["server_url"] == "https://other.example"


async def test_rotation_keeps_old_token_valid_during_overlap(gateway: Gateway):
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    created = await (await gateway.admin("PUT", "/admin/v1/users/u3", json=body)).json()
    rotated = await (await gateway.admin("POST", "/admin/v1/users/u3/credentials/rotate")).json()
    assert rotated["server_token"] != created["server_token"]
    for token in (created["server_token"], rotated["server_token"]):
        resp = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
    resp = await gateway.client.post("/v1/ping", headers={"Authorization": "Bearer ast.u3.forged"})
    assert resp.status == 401


async def test_unknown_user_is_404(gateway: Gateway):
    resp = await gateway.admin("GET", "/admin/v1/users/nobody")
    assert resp.status == 404 and (await resp.json())["error"] == "user_not_found"


async def test_an_immediate_revoke_refuses_a_leaked_token_and_secret_at_once(gateway: Gateway, dedicated):
    created = await gateway.create_user(dedicated, "leaky")
    leaked = {"Authorization": f"Bearer {created['server_token']}"}
    resp = await gateway.admin("POST", "/admin/v1/users/leaky/credentials/rotate", json={"overlap": 0})
    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    assert rotated["overlap"] == 0

    # The leaked token is refused right after, with a message saying why.
    resp = await gateway.client.post("/v1/ping", headers=leaked)
    assert resp.status == 401
    assert "rotated out" in (await resp.json())["detail"]
    current = {"Authorization": f"Bearer {rotated['server_token']}"}
    assert (await gateway.client.post("/v1/ping", headers=current)).status == 200

    # The next delivery is signed with the new secret only: the leaked one verifies nothing.
    dedicated.secrets["leaky"] = [rotated["webhook_secret"]]
    await gateway.services.handoff("leaky", [Item(Event("telegram.update", "telegram", {"update_id": 1}))])
    await dedicated.wait_for(lambda: len(dedicated.events("leaky")) == 1)
    [received] = [r for r in dedicated.received if r.user_id == "leaky"]
    raw = orjson.dumps(received.body)
    signing.verify(rotated["webhook_secret"], raw, received.headers)  # the same bytes do verify
    with pytest.raises(WebhookVerificationError):
        signing.verify(created["webhook_secret"], raw, received.headers)
    assert len(received.headers["webhook-signature"].split()) == 1


@pytest.mark.parametrize("overlap", [-1, 604801, 1.5, "0", True, None])
async def test_an_overlap_out_of_bounds_is_400_and_rotates_nothing(gateway: Gateway, overlap: object):
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    created = await (await gateway.admin("PUT", "/admin/v1/users/bounded", json=body)).json()
    payload = {} if overlap is None else {"overlap": overlap}
    resp = await gateway.admin("POST", "/admin/v1/users/bounded/credentials/rotate", json=payload)
    if overlap is None:
        # No overlap given: a day, as before.
        assert resp.status == 200
        assert (await resp.json())["overlap"] == 86400
    else:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_overlap"
    headers = {"Authorization": f"Bearer {created['server_token']}"}
    assert (await gateway.client.post("/v1/ping", headers=headers)).status == 200
