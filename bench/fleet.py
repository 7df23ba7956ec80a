"""The processes one scenario needs: a dedicated Redis, the servers' sink, a gateway process,
the baseline forwarder, and synthetic users registered through the real admin API."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from bench.common import ROOT, Child, RedisServer, free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class User:
    user_id: str
    chat_id: int
    private_key: str
    public_key: str
    server_token: str = ""
    webhook_secret: str = ""


def make_users(n: int, prefix: str = "u") -> list[User]:
    users = []
    for i in range(n):
        key = X25519PrivateKey.generate()
        users.append(
            User(
                user_id=f"{prefix}{i:06d}",
                chat_id=500_000_000 + i,
                private_key=b64url(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())),
                public_key=b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
            )
        )
    return users


@dataclass
class Fleet:
    """Start with `start()`; `stop()` ends every process it started (by pid) and removes Redis."""

    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_root: Path = ROOT
    """The checkout whose gateway code runs (another commit's, to compare two versions)."""
    workers: int = 1
    """Gateway processes (`ally-gateway serve --workers N`): one, or N supervised by a parent."""
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    master_keys: str = field(default_factory=lambda: "bench1:" + b64url(os.urandom(32)))
    redis: RedisServer | None = None
    sink: Child | None = None
    gateway: Child | None = None
    forwarder: Child | None = None
    session: aiohttp.ClientSession | None = None

    def env(self) -> dict[str, str]:
        assert self.redis is not None
        port = free_port()
        return {
            "ALLY_REDIS_URL": self.redis.url,
            "ALLY_ADMIN_TOKEN": self.admin_token,
            "ALLY_MASTER_KEYS": self.master_keys,
            "ALLY_KEY_PREFIX": "ally:",
            "PORT": str(port),
            "ALLY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "ALLY_LOG_LEVEL": "WARNING",
            **self.gateway_env,
        }

    async def start(self, *, forwarder: bool = False) -> Fleet:
        try:
            self.redis = RedisServer().start()
            self.sink = Child("bench.sink").start()
            env = {**self.env(), "PYTHONPATH": str(self.gateway_root)}
            args = ("--workers", str(self.workers)) if self.workers != 1 else ()
            self.gateway = Child("bench.gateway", *args, env=env, cwd=self.gateway_root).start()
            if forwarder:
                self.forwarder = Child("bench.forwarder", "--target", f"{self.sink.url}/raw").start()
        except BaseException:
            await self.stop()
            raise
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for child in (self.forwarder, self.gateway, self.sink):  # each stopped by its own pid
            if child is not None:
                child.stop()
        if self.redis is not None:
            self.redis.stop()

    # ------------------------------------------------------------------ helpers

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def admin(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.gateway is not None
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with self.http.request(method, self.gateway.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            return resp.status, orjson.loads(body) if body else None

    async def sink_call(self, method: str, path: str, data: Any = None) -> Any:
        assert self.sink is not None
        payload = orjson.dumps(data) if data is not None else None
        async with self.http.request(method, self.sink.url + path, data=payload) as resp:
            resp.raise_for_status()
            return orjson.loads(await resp.read())

    async def register(self, users: list[User], concurrency: int = 32) -> None:
        """PUT every user through the admin API, then hand the sink their keys and secrets."""
        assert self.sink is not None
        sink_url = self.sink.url  # read here: the assert above does not narrow inside `one`
        sem = asyncio.Semaphore(concurrency)

        async def one(user: User) -> None:
            async with sem:
                status, body = await self.admin(
                    "PUT",
                    f"/admin/v1/users/{user.user_id}",
                    json={"server_url": f"{sink_url}/u/{user.user_id}", "server_public_key": user.public_key},
                )
            if status != 201:
                raise RuntimeError(f"registering {user.user_id}: {status} {body}")
            user.server_token = body["server_token"]
            user.webhook_secret = body["webhook_secret"]

        await asyncio.gather(*(one(u) for u in users))
        await self.sink_call("POST", "/_users", {u.user_id: [u.private_key, u.webhook_secret] for u in users})
