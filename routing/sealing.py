"""Sealing (contract §5): RFC 9180 HPKE base mode, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, ChaCha20-Poly1305; output `enc (32 bytes) || ciphertext`, base64url
without padding; info = "ally-gateway/v1|<user_id>|<event_id>"."""

from __future__ import annotations

import base64
import binascii

import orjson
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gateway.errors import SealingError
from gateway.types import JSON

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def info(user_id: str, event_id: str) -> bytes:
    return f"ally-gateway/v1|{user_id}|{event_id}".encode()


def parse_public_key(text: str) -> X25519PublicKey:
    """A server key as the admin API takes it: base64url of the raw 32-byte X25519 key."""
    try:
        raw = unb64url(text.strip())
    except (binascii.Error, ValueError) as exc:
        raise SealingError("server_public_key is not base64url") from exc
    if len(raw) != 32:
        raise SealingError(f"server_public_key must be 32 raw bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def seal(public_key: X25519PublicKey, user_id: str, event_id: str, payload: JSON) -> str:
    plaintext = orjson.dumps(payload)
    return b64url(SUITE.encrypt(plaintext, public_key, info=info(user_id, event_id)))


def open_sealed(private_key: X25519PrivateKey, user_id: str, event_id: str, sealed: str) -> JSON:
    """The server side of `seal`, used by the example server and tests."""
    plaintext = SUITE.decrypt(unb64url(sealed), private_key, info=info(user_id, event_id))
    value = orjson.loads(plaintext)
    if not isinstance(value, dict):
        raise SealingError("sealed payload is not a JSON object")
    return value
