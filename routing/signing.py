"""Standard Webhooks signatures (contract §4) for deliveries to dedicated servers."""

from __future__ import annotations

import base64
import datetime as dt
import os

from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def headers(secret: str, msg_id: str, body: str, now: dt.datetime | None = None) -> dict[str, str]:
    stamp = now or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(msg_id, stamp, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
    }


def verify(secret: str, body: str | bytes, headers: dict[str, str]) -> None:
    """Raise `standardwebhooks.WebhookVerificationError` unless `headers` sign `body` (server side)."""
    Webhook(secret).verify(body, headers)
