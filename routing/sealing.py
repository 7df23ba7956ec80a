"""Sealing (contract §5, §9.6): RFC 9180 HPKE base mode, single shot, to the user's server key.

The key's length picks the suite: 32 bytes is DHKEM(X25519, HKDF-SHA256); 1216 bytes
(ML-KEM-768 public key, then X25519 public key) is the hybrid MLKEM768-X25519 (X-Wing).
Both use HKDF-SHA256 and ChaCha20-Poly1305. Output `enc || ciphertext`, base64url without
padding; info = "ally-gateway/v1|<user_id>|<event_id>". Every sealed event names the key it
was sealed to by its `kid`: base64url of the first 8 bytes of SHA-256 over the raw key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import orjson
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from foundation.errors import SealingError
from foundation.types import JSON

SuiteName = Literal["X25519", "MLKEM768-X25519"]
X25519_LEN = 32
MLKEM768_LEN = 1184
HYBRID_LEN = MLKEM768_LEN + X25519_LEN
SUITES: dict[SuiteName, hpke.Suite] = {
    "X25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
    "MLKEM768-X25519": hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
}
SUITE = SUITES["X25519"]
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")

PublicKey = X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey = X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True, slots=True)
class ServerKey:
    """A server's public key, parsed and checked: what events are sealed to."""

    raw: bytes
    suite: SuiteName
    kid: str
    public: PublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def info(user_id: str, event_id: str) -> bytes:
    return f"ally-gateway/v1|{user_id}|{event_id}".encode()


def kid_of(raw: bytes) -> str:
    return b64url(hashlib.sha256(raw).digest()[:8])


def suite_of(raw: bytes) -> SuiteName:
    if len(raw) == X25519_LEN:
        return "X25519"
    if len(raw) == HYBRID_LEN:
        return "MLKEM768-X25519"
    raise SealingError(
        f"server_public_key must be {X25519_LEN} bytes (X25519) or {HYBRID_LEN} bytes "
        f"(ML-KEM-768 then X25519), got {len(raw)}"
    )


def decode_public_key(text: str) -> bytes:
    """The raw bytes of a key as the admin API takes it (base64url, padding optional)."""
    text = text.strip()
    if not _B64URL.fullmatch(text):
        raise SealingError("server_public_key is not base64url")
    try:
        return unb64url(text.rstrip("="))
    except (binascii.Error, ValueError) as exc:
        raise SealingError("server_public_key is not base64url") from exc


def parse_public_key(text: str, *, probe: bool = True) -> ServerKey:
    """A server key as the admin API takes it, refused unless events can really be sealed to it
    (`probe=False` skips the trial seal, for a key that passed it when it was registered)."""
    raw = decode_public_key(text)
    suite = suite_of(raw)
    public: PublicKey
    try:
        x25519 = X25519PublicKey.from_public_bytes(raw[-X25519_LEN:])
        if suite == "X25519":
            public = x25519
        else:
            public = hpke.MLKEM768X25519PublicKey(MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_LEN]), x25519)
    except ValueError as exc:
        # ML-KEM-768 refuses an encoding whose coefficients are not reduced mod q (FIPS 203 §7.2).
        raise SealingError("server_public_key: the ML-KEM-768 part is not a valid public key") from exc
    if probe:
        try:
            # A low-order X25519 point parses, but no shared secret comes out of it: find out now,
            # not when the first event for this user arrives.
            SUITES[suite].encrypt(b"", public, info=b"ally-gateway/v1|key-check")
        except ValueError as exc:
            raise SealingError("server_public_key: the X25519 part is a low-order point, not a usable key") from exc
    return ServerKey(raw, suite, kid_of(raw), public)


def seal(key: ServerKey, user_id: str, event_id: str, payload: JSON) -> str:
    plaintext = orjson.dumps(payload)
    return b64url(SUITES[key.suite].encrypt(plaintext, key.public, info=info(user_id, event_id)))


def open_sealed(private_key: PrivateKey, user_id: str, event_id: str, sealed: str) -> JSON:
    """The server side of `seal`, used by the example server and tests."""
    suite = SUITES["X25519" if isinstance(private_key, X25519PrivateKey) else "MLKEM768-X25519"]
    plaintext = suite.decrypt(unb64url(sealed), private_key, info=info(user_id, event_id))
    value = orjson.loads(plaintext)
    if not isinstance(value, dict):
        raise SealingError("sealed payload is not a JSON object")
    return value
