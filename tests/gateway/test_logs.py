from __future__ import annotations

import io
import logging

import orjson
import pytest

from foundation import logs
from foundation.logs import JsonFormatter, bound_request_id, scrub
from tests.support.gateway import Gateway, random_public_key

# Shapes as the providers issue them (lengths and alphabets from their docs and real traffic).
BOT_TOKEN = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
GOOGLE_ACCESS = (
    "ya29.a0AfB_byDk3Hq9xJ2n8nQ1vR7sT0uW4yZ6bC8dE0fG2hI4jK6lM8nO0pQ2rS4tU6vW8xY0zA2bC4dE6fG8hI0jK2lM4nO6pQ8rS0tU2v"
    "W4xY6zA8bC0dE2fG4hI6jK8lM0nO2pQ4rS6tU8vW0xY2zA4b0171"
)
GOOGLE_REFRESH = "1//0gLmZx3Tq8RkWCgYIARAAGBASNwF-L9IrQm2Vd8sJkP0wXyZaBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
GOOGLE_CODE = "4/0AfJohXn3Jq8rT2vK9mZ4bL7cW1sY6pD0eF5gH2iJ8kN3oP"
ID_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjFlOWdkazcifQ."
    "eyJpc3MiOiJodHRwczovL2FjY291bnRzLmdvb2dsZS5jb20iLCJzdWIiOiIxMTAxNjk0ODQ0NzQzODYyNzYzMzQiLCJlbWFpbCI6ImFAYi5jIn0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLXRoZXJlLXRvLW1ha2UtaXQtbG9uZw"
)
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ANTHROPIC_KEY = "sk-ant-api03-R2D2C3POxWingBB8-K2SO_L337xxHn1Solo0Chewie9Leia4Luke5Yoda6MaceWindu7Quigon8ObiWanAA"
SERVER_TOKEN = "ast.alice.Zk3q9J2mXw8_vR7tY1uB5nC4dE6fG0hI2jK8lM3oP9q"
CLIENT_STATE = "secretClientValue"

SECRETS = [BOT_TOKEN, GOOGLE_ACCESS, GOOGLE_REFRESH, GOOGLE_CODE, ID_TOKEN, WHSEC, ANTHROPIC_KEY, SERVER_TOKEN]

SAMPLES = [
    f"POST https://api.telegram.org/bot{BOT_TOKEN}/getMe failed",
    f"ALLY_TELEGRAM_BOT_TOKEN={BOT_TOKEN}",
    f"Authorization: Bearer {GOOGLE_ACCESS}",
    f"authorization: bearer {ANTHROPIC_KEY}",
    f'{{"access_token": "{GOOGLE_ACCESS}", "expires_in": 3599, "refresh_token": "{GOOGLE_REFRESH}", '
    f'"scope": "https://www.googleapis.com/auth/gmail.readonly", "token_type": "Bearer", "id_token": "{ID_TOKEN}"}}',
    f"grant_type=authorization_code&code={GOOGLE_CODE}&redirect_uri=https%3A%2F%2Fgw.example%2Foauth",
    f"refresh_token={GOOGLE_REFRESH}&client_id=1234.apps.googleusercontent.com&client_secret=GOCSPX-abcdefg",
    f"ValueError: bad signature with secret {WHSEC}",
    f"x-api-key: {ANTHROPIC_KEY}",
    f"server token {SERVER_TOKEN} rejected",
    f"push JWT {ID_TOKEN} has the wrong audience",
]


@pytest.mark.parametrize("sample", SAMPLES)
def test_token_shapes_are_scrubbed(sample: str):
    cleaned = scrub(sample)
    for secret in SECRETS:
        assert secret not in cleaned
        # Not even a long piece of one survives.
        assert secret[-20:] not in cleaned
    assert "GOCSPX-abcdefg" not in cleaned


@pytest.mark.parametrize(
    "sample",
    [
        "alice@example.com",
        "Alice.Smith+ally@mail.example.co.uk",
        "/gmail/v1/users/alice%40example.com/history?startHistoryId=9876",
        '{"emailAddress": "bob@contoso.onmicrosoft.com", "historyId": "9876"}',
    ],
)
def test_email_addresses_are_scrubbed(sample: str):
    cleaned = scrub(sample)
    assert "@" not in cleaned.replace("[email]", "")
    assert "alice" not in cleaned.lower()
    assert "bob@" not in cleaned


def test_graph_client_state_and_message_content_in_provider_bodies_are_scrubbed():
    graph = (
        '{"value":[{"subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","clientState":"secretClientValue",'
        '"changeType":"created","resource":"Users/{user-id}/Messages/{message-id}","tenantId":"84bd8158-6d4d-4958-8b9f-'
        '9d6445542f95"}]}'
    )
    cleaned = scrub(graph)
    assert CLIENT_STATE not in cleaned
    assert "7f105c7d-2dc5-4530-97cd-4e7ae6534c07" in cleaned  # a subscription id is an id, not a secret
    telegram = '{"update_id":10000,"message":{"text":"my PIN is 4711","caption":"holiday photo","chat":{"id":-10012}}}'
    cleaned = scrub(telegram)
    assert "4711" not in cleaned
    assert "holiday photo" not in cleaned
    assert '"update_id":10000' in cleaned
    assert '"id":-10012' in cleaned
    assert "my PIN" not in scrub("sendMessage?chat_id=42&text=my%20PIN%20is%204711")
    assert "secretClientValue" not in scrub("{'clientState': 'secretClientValue'}")


@pytest.mark.parametrize(
    "ordinary",
    [
        "/admin/v1/users/alice_01/export",
        "/telegram/webhook/110201543",
        "evt_018f2a3b4c5d6e7f8091a2b3c4d5e6",
        "txn_018f2a3b4c5d6e7f8091a2b3c4d5",
        "req_5f2b8c9d0e1a2b3c",
        "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "user_2b7f9c1e-4d3a-4c5b-9e8f-1a2b3c4d5e6f",
        "a_rather_long_but_ordinary_user_identifier_01",
        "/usr/lib/python3.11/site-packages/aiohttp/web_protocol.py",
        "/var/lib/ally/GatewayData/redis/appendonly/Segments/Current",
        "ally:{u:alice}:q",
        "chat -1001234567890 is not linked",
        "delivery refused status=503 retry_after=30",
        '{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}',
        '{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}',
        "historyId 18446744073709551615",
        "2026-11-27T10:00:00.123Z",
    ],
)
def test_ordinary_ids_paths_and_error_codes_survive(ordinary: str):
    assert scrub(ordinary) == ordinary


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_exception_messages_and_their_causes_are_scrubbed():
    logger, stream = _capture()

    class ProviderError(Exception):
        pass

    try:
        try:
            raise ValueError(f'token endpoint answered 400: {{"refresh_token": "{GOOGLE_REFRESH}"}}')
        except ValueError as exc:
            raise ProviderError(f"refresh failed for alice@example.com with {GOOGLE_ACCESS}") from exc
    except ProviderError:
        logger.exception("refresh failed", extra={"provider": "google", "authorization": f"Bearer {GOOGLE_ACCESS}"})
    line = stream.getvalue()
    entry = orjson.loads(line)
    for secret in (GOOGLE_REFRESH, GOOGLE_ACCESS, "alice@example.com"):
        assert secret not in line
    assert entry["error"]["type"] == "ProviderError"
    assert entry["error"]["caused_by"][0].startswith("ValueError: token endpoint answered 400")
    assert entry["authorization"] == "[redacted]"
    assert entry["provider"] == "google"


def test_extra_fields_named_like_content_are_withheld_whatever_their_shape():
    logger, stream = _capture()
    logger.info("x", extra={"text": "hi", "email_address": "a", "payload": {"a": 1}, "count": 3, "raw": b"\x00\x01"})
    entry = orjson.loads(stream.getvalue())
    assert entry["text"] == entry["email_address"] == entry["payload"] == "[redacted]"
    assert entry["count"] == 3
    assert entry["raw"] == "[2 bytes]"


def test_every_line_carries_a_request_id():
    logger, stream = _capture()
    logger.info("outside")
    with bound_request_id("era_0123456789abcdef"):
        logger.info("inside")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"].startswith("proc_")
    assert second["request_id"] == "era_0123456789abcdef"


def test_a_token_shaped_request_id_from_a_caller_is_replaced():
    assert logs.accept_request_id("abc-123_x") == "abc-123_x"
    assert logs.accept_request_id(BOT_TOKEN).startswith("req_")
    assert logs.accept_request_id("Zk3q9J2mXw8vR7tY1uB5nC4dE6fG0hI2jK8lM3oP9q").startswith("req_")
    assert logs.accept_request_id("a b").startswith("req_")
    assert logs.accept_request_id(None).startswith("req_")


async def test_answers_carry_the_request_id_and_log_lines_share_it(gateway: Gateway, caplog: pytest.LogCaptureFixture):
    resp = await gateway.admin("GET", "/admin/v1/users/nobody", headers={"X-Request-Id": "platform-42"})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "platform-42"
    resp = await gateway.client.get("/no/such/route")
    assert resp.status == 404
    assert resp.headers["X-Request-Id"].startswith("req_")
    resp = await gateway.client.get("/healthz")
    assert resp.headers["X-Request-Id"].startswith("req_")
    with caplog.at_level(logging.INFO):
        resp = await gateway.admin(
            "PUT",
            "/admin/v1/users/rid1",
            json={"server_url": "https://srv.example", "server_public_key": random_public_key()},
            headers={"X-Request-Id": "platform-43"},
        )
    assert resp.status == 201
    formatted = [orjson.loads(JsonFormatter().format(r)) for r in caplog.records if r.name.startswith("gateway")]
    assert formatted
    assert all(e["request_id"] == "platform-43" for e in formatted)
