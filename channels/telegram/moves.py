"""Moves of a linked chat to another user, waiting for their Telegram user to confirm (contract §9.4).

`/start <code>` from a private chat linked to someone else, or the bot added to a group
linked to someone else, does not move the chat: the gateway posts an inline button whose
`callback_data` is `ally:move:<token>`. The token exists only there (at Telegram). What the
button would do is kept for 15 minutes under `tg:move:<sha256(token)>`, encrypted with
AES-256-GCM under a key derived from the token: Redis alone names no user and no chat.
The record is taken (deleted) by the one press that confirms, so a button works once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from foundation.redis_keys import Keys

PREFIX = "ally:move:"
"""`callback_data` of the gateway's own buttons; a button with it is never forwarded to a server."""
TTL = 15 * 60
_TOKEN_BYTES = 24  # 32 characters; with the prefix 42 of the 64 bytes callback_data allows
_CONTEXT = "ally-gateway/v1|tg-move|"

Via = Literal["start", "group"]


@dataclass(frozen=True, slots=True)
class Move:
    user_id: str
    """The user the chat moves to."""
    chat_id: int
    chat_type: str
    confirmer: int
    """The Telegram user whose press moves the chat (who opened the link, or added the bot)."""
    via: Via
    expires: float


def _derive(token: str, purpose: str) -> bytes:
    return hashlib.sha256(f"{_CONTEXT}{purpose}|{token}".encode()).digest()


class Moves:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _key(self, token: str) -> str:
        return self._keys.global_key(f"tg:move:{_derive(token, 'id').hex()[:32]}")

    async def propose(self, user_id: str, chat_id: int, chat_type: str, confirmer: int, via: Via) -> str:
        """Keep a move for 15 minutes; return the button's `callback_data`."""
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        move = Move(user_id, chat_id, chat_type, confirmer, via, time.time() + TTL)
        nonce = os.urandom(12)
        key = self._key(token)
        sealed = AESGCM(_derive(token, "key")).encrypt(nonce, orjson.dumps(asdict(move)), key.encode())
        await self._redis.set(key, nonce + sealed, ex=TTL)
        return PREFIX + token

    async def read(self, data: str) -> Move | None:
        """The move behind a button's `callback_data`, or None when unknown, expired or used."""
        token = data.removeprefix(PREFIX)
        if not data.startswith(PREFIX) or not token:
            return None
        key = self._key(token)
        raw = await self._redis.get(key)
        if raw is None or len(raw) < 13:
            return None
        try:
            plain = AESGCM(_derive(token, "key")).decrypt(raw[:12], raw[12:], key.encode())
        except InvalidTag:
            return None
        move = Move(**orjson.loads(plain))
        return move if move.expires > time.time() else None

    async def take(self, data: str) -> bool:
        """Use the move up; True only for the one caller that did (a second press finds nothing)."""
        return bool(await self._redis.delete(self._key(data.removeprefix(PREFIX))))
