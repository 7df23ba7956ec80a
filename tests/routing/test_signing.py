"""Delivery signatures against the `standardwebhooks` library, the scheme's reference."""

from __future__ import annotations

import datetime as dt

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from routing import signing


@pytest.mark.parametrize(
    "body",
    ['{"txn_id":"txn_1","events":[]}', '{"t":"é ✓ \\u0000"}', "", "x" * 100_000],
)
def test_signatures_are_the_librarys_own(body: str):
    secret = signing.new_secret()
    now = dt.datetime.now(dt.UTC)
    made = signing.headers(secret, "txn_1", body.encode(), now=now)
    assert made["webhook-signature"] == Webhook(secret).sign("txn_1", now, body)
    assert made["webhook-timestamp"] == str(int(now.timestamp()))
    Webhook(secret).verify(body.encode(), made, json_parse=False)


def test_an_unpadded_or_unprefixed_secret_reads_as_the_library_reads_it():
    secret = signing.new_secret()
    now = dt.datetime.now(dt.UTC)
    for spelling in (secret.rstrip("="), secret.removeprefix("whsec_")):
        assert signing.headers(spelling, "m", "b", now)["webhook-signature"] == Webhook(spelling).sign("m", now, "b")


def test_a_signature_with_another_secret_or_body_does_not_verify():
    secret, other = signing.new_secret(), signing.new_secret()
    made = signing.headers(other, "txn_1", b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b"{}", made)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(b"{ }", signing.headers(other, "txn_1", b"{}"))


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError, match="empty"):
        signing.signature("whsec_", "m", 0, b"")
