"""Standard Webhooks signatures (contract §4) for deliveries to dedicated servers.

Signing is the scheme itself (HMAC-SHA256 over `<msg_id>.<timestamp>.<body>` with the secret's
base64-decoded key, `v1,<base64>`), computed over the body's bytes as they are sent; the
`standardwebhooks` library verifies (servers, tests) and is the oracle of the tests.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os

from standardwebhooks import Webhook

PREFIX = "whsec_"
_keys: dict[str, bytes] = {}
"""Decoded keys by secret: every delivery signs with one, and secrets change rarely."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(32)).decode()


def _key(secret: str) -> bytes:
    key = _keys.get(secret)
    if key is None:
        try:
            # As the library reads it: the prefix optional, padding optional.
            key = base64.b64decode(secret.removeprefix(PREFIX) + "==")
        except (binascii.Error, ValueError) as exc:
            raise ValueError("webhook secret is not base64") from exc
        if not key:
            raise ValueError("webhook secret may not be empty")
        if len(_keys) >= 100_000:
            _keys.clear()
        _keys[secret] = key
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `body` for `msg_id` at `timestamp` (Unix seconds)."""
    mac = hmac.new(_key(secret), b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: str | bytes, now: dt.datetime | None = None) -> dict[str, str]:
    stamp = int((now or dt.datetime.now(dt.UTC)).timestamp())
    data = body.encode() if isinstance(body, str) else body
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature(secret, msg_id, stamp, data),
    }


def verify(secret: str, body: str | bytes, headers: dict[str, str]) -> None:
    """Raise `standardwebhooks.WebhookVerificationError` unless `headers` sign `body` (server side)."""
    Webhook(secret).verify(body, headers)
