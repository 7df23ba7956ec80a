from __future__ import annotations

import json

from tests.support.export import validate
from tests.support.mail import connect_gmail, connect_outlook


async def test_status_and_export_show_watch_and_subscription_without_secrets(mail, google, graph, dedicated):
    address = await connect_gmail(mail, google, dedicated, "pat")
    await connect_outlook(mail, graph, dedicated, "pat")
    history = google.change(address)
    push = google.push_body(address, history)
    resp = await mail.client.post("/gmail/push", json=push, headers={"Authorization": f"Bearer {google.push_token()}"})
    assert resp.status == 204

    status = await (await mail.admin("GET", "/admin/v1/users/pat")).json()
    assert status["gmail"]["watch"] == "active"
    assert status["gmail"]["last_history_id"] == str(history)
    assert status["outlook"]["subscription"] == "active"
    assert status["outlook"]["expires_at"].endswith("Z")

    resp = await mail.admin("GET", "/admin/v1/users/pat/export")
    document = await resp.json()
    validate(document)
    assert document["gmail"] == {
        "watch": "active",
        "expires_at": status["gmail"]["expires_at"],
        "last_history_id": str(history),
    }
    assert document["outlook"]["subscription"] == "active"
    text = json.dumps(document)
    sub = graph.of("pat")[0]
    for secret in (sub.body["clientState"], *google.tokens, *google.refresh_tokens, *graph.tokens):
        assert secret not in text


async def test_export_of_a_user_without_mail_connections_is_valid(mail, dedicated):
    await mail.create_user(dedicated, "quin")
    document = await (await mail.admin("GET", "/admin/v1/users/quin/export")).json()
    validate(document)
    assert document["gmail"] == {"watch": "none", "expires_at": None, "last_history_id": None}
    assert document["outlook"] == {"subscription": "none", "expires_at": None}
