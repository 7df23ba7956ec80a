"""A minimal dedicated server: receives the gateway's transactions, verifies them, opens them.

    python examples/dedicated_server.py --print-key        # make (or load) the key, print the public key
    python examples/dedicated_server.py --new-key          # change keys: print the new public key
    ALLY_WEBHOOK_SECRET=whsec_... python examples/dedicated_server.py

It does what every real dedicated server must do (docs/delivery.md, docs/sealing.md):
verify the Standard Webhooks signature with the user's webhook secret, answer a retried
transaction without handling it twice, open each sealed event with the private key its `kid`
names, and answer 200 so the gateway sends the next transaction. Here "handling" an event
means printing its type and payload and, given the gateway's URL and the server token,
answering each Telegram message with python-telegram-bot through the gateway: a typing
action first, then the text echoed back (docs/telegram.md).

Keys (docs/sealing.md): `--suite mlkem768-x25519` (the default, post-quantum hybrid) or
`x25519` picks the kind of key made. `--new-key` makes a new key the current one and keeps
the previous ones, because events queued before the gateway learnt the new key stay sealed to
the old one. An old key is dropped once no queued event can need it any more (see `retire`).

Environment:
    ALLY_WEBHOOK_SECRET   the webhook_secret from the admin API (several: comma-separated)
    ALLY_GATEWAY_URL      optional, with ALLY_SERVER_TOKEN: ping the gateway at start (which
    ALLY_SERVER_TOKEN     releases events held while this server was down) and echo messages
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from standardwebhooks import Webhook, WebhookVerificationError
from telegram import Bot, Update
from telegram.constants import ChatAction
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

# Contract §5 and §9.6: RFC 9180 base mode, HKDF-SHA256, ChaCha20-Poly1305, with the KEM the
# key's kind names: DHKEM(X25519, HKDF-SHA256) or the hybrid MLKEM768-X25519.
SUITES = {
    "x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
    "mlkem768-x25519": hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
}
REMEMBERED_TXNS = 10_000
PrivateKey = X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ServerKey:
    """One private key of the server; `raw_public` is what the admin API takes."""

    def __init__(self, suite: str, x25519: X25519PrivateKey, mlkem: MLKEM768PrivateKey | None = None) -> None:
        self.suite, self.x25519, self.mlkem = suite, x25519, mlkem
        self.private: PrivateKey = x25519 if mlkem is None else hpke.MLKEM768X25519PrivateKey(mlkem, x25519)
        x_public = x25519.public_key().public_bytes_raw()
        # The hybrid public key is the ML-KEM-768 key (1184 bytes) then the X25519 key (32 bytes).
        self.raw_public = x_public if mlkem is None else mlkem.public_key().public_bytes_raw() + x_public
        digest = hashes.Hash(hashes.SHA256())
        digest.update(self.raw_public)
        self.kid = b64url(digest.finalize()[:8])

    @classmethod
    def generate(cls, suite: str) -> ServerKey:
        return cls(suite, X25519PrivateKey.generate(), MLKEM768PrivateKey.generate() if suite != "x25519" else None)

    def to_json(self) -> dict[str, str]:
        stored = {"suite": self.suite, "x25519": b64url(self.x25519.private_bytes_raw())}
        if self.mlkem is not None:
            stored["mlkem768_seed"] = b64url(self.mlkem.private_bytes_raw())  # the 64-byte seed
        return stored

    @classmethod
    def from_json(cls, stored: dict[str, str]) -> ServerKey:
        x25519 = X25519PrivateKey.from_private_bytes(unb64url(stored["x25519"]))
        seed = stored.get("mlkem768_seed")
        return cls(stored["suite"], x25519, MLKEM768PrivateKey.from_seed_bytes(unb64url(seed)) if seed else None)

    def open(self, user_id: str, event: dict[str, Any]) -> Any:
        info = f"ally-gateway/v1|{user_id}|{event['id']}".encode()
        return json.loads(SUITES[self.suite].decrypt(unb64url(event["sealed"]), self.private, info=info))


class Keyring:
    """The server's private keys, oldest first, the last one current; kept in one file that only
    this user can read. They never leave this machine."""

    def __init__(self, path: Path, keys: list[ServerKey]) -> None:
        self.path, self.keys = path, keys

    @classmethod
    def load_or_create(cls, path: Path, suite: str) -> Keyring:
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                return cls(path, [ServerKey.from_json(k) for k in stored["keys"]])
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"{path} is not a keyring this example wrote") from None
        ring = cls(path, [ServerKey.generate(suite)])
        ring.save()
        return ring

    @property
    def current(self) -> ServerKey:
        return self.keys[-1]

    def by_kid(self, kid: str) -> ServerKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def add(self, suite: str) -> ServerKey:
        self.keys.append(ServerKey.generate(suite))
        self.save()
        return self.current

    def retire_before(self, kid: str) -> list[str]:
        """Drop every key made before the one named `kid`; return the kids dropped."""
        key = self.by_kid(kid)
        if key is None:
            return []
        index = self.keys.index(key)
        dropped, self.keys = [k.kid for k in self.keys[:index]], self.keys[index:]
        if dropped:
            self.save()
        return dropped

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".new")
        scratch.unlink(missing_ok=True)
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [k.to_json() for k in self.keys]}, f)
        os.replace(scratch, self.path)  # never a half-written keyring


def public_key_text(key: ServerKey) -> str:
    """The form `PUT /admin/v1/users/{id}` takes: base64url of the raw public key."""
    return b64url(key.raw_public)


def say(text: str) -> None:
    print(text, flush=True)


def gateway_bot(gateway_url: str, token: str) -> Bot:
    """python-telegram-bot, unchanged, talking to the gateway (which holds the bot's token)."""
    base = gateway_url.rstrip("/")
    return Bot(
        token="ally:gateway",  # any text: the gateway never needs it
        base_url=lambda _: f"{base}/v1/telegram",
        base_file_url=lambda _: f"{base}/v1/telegram/files",
        request=HTTPXRequest(httpx_kwargs={"headers": {"Authorization": f"Bearer {token}"}}),
    )


async def echo(bot: Bot, payload: dict[str, Any]) -> None:
    """Answer one Telegram message: typing…, then its text back."""
    update = Update.de_json(payload, bot)
    message, chat = update.effective_message, update.effective_chat
    if message is None or chat is None or not message.text or message.text.startswith("/"):
        return
    try:
        await bot.send_chat_action(chat.id, ChatAction.TYPING)
        await bot.send_message(chat.id, f"You said: {message.text}")
        say(f"    answered chat {chat.id}")
    except TelegramError as exc:
        say(f"    could not answer chat {chat.id}: {exc.message}")


class Receiver:
    def __init__(self, keyring: Keyring, user_id: str, secrets: list[str], bot: Bot | None = None) -> None:
        self.keyring = keyring
        # Keys older than this kid are dropped when the next transaction arrives (see `retire`).
        self.retire_after: tuple[str, str] | None = None
        self.user_id = user_id
        self.webhooks = [Webhook(s) for s in secrets]
        self.bot = bot
        self.answering: set[asyncio.Task[None]] = set()
        # Transactions already handled: a lost 200 makes the gateway send the same one again.
        self.handled: collections.OrderedDict[str, None] = collections.OrderedDict()

    def verified(self, body: bytes, headers: dict[str, str]) -> bool:
        # During a rotation overlap the gateway signs with the new and the previous secret;
        # any one of ours matching any of its signatures is enough.
        for webhook in self.webhooks:
            try:
                webhook.verify(body, headers)
                return True
            except WebhookVerificationError:
                continue
        return False

    async def transaction(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not self.verified(body, headers):
            say(f"refused {txn_id}: the signature does not verify with ALLY_WEBHOOK_SECRET")
            return web.json_response({"error": "bad_signature"}, status=401)
        if headers.get("webhook-id") != txn_id:
            return web.json_response({"error": "txn_id_mismatch"}, status=400)
        if txn_id in self.handled:
            say(f"{txn_id}: a retry of a transaction already handled; acknowledged again")
            return web.json_response({"ok": True})
        self.retire(txn_id)
        transaction = json.loads(body)
        events = transaction["events"]
        say(f"{txn_id}: {len(events)} event(s)")
        for event in events:
            try:
                payload = self.open_event(event)
            except (InvalidTag, ValueError, KeyError):
                # Not sealed to this key for this user and event: never guess, just report it.
                say(f"  {event.get('id')}: could not be opened (wrong key or user id?)")
                continue
            say(f"  {event['type']} {event['id']} from {event['channel']} at {event['received_at']}")
            say("    " + json.dumps(payload, ensure_ascii=False, indent=2).replace("\n", "\n    "))
            if self.bot is not None and event["type"] == "telegram.update":
                # Answered after the 200: a slow reply must not hold up (or repeat) the delivery.
                task = asyncio.create_task(echo(self.bot, payload))
                self.answering.add(task)
                task.add_done_callback(self.answering.discard)
        if events and "kid" in events[-1]:
            self.retire_after = (txn_id, events[-1]["kid"])
        self.handled[txn_id] = None
        if len(self.handled) > REMEMBERED_TXNS:
            self.handled.popitem(last=False)
        return web.json_response({"ok": True})

    def open_event(self, event: dict[str, Any]) -> Any:
        key = self.keyring.by_kid(event["kid"]) if "kid" in event else None
        if key is not None:
            return key.open(self.user_id, event)
        if "kid" in event:
            raise KeyError(event["kid"])
        # Queued by a gateway from before `kid`: one of the X25519 keys opens it.
        for candidate in reversed(self.keyring.keys):
            try:
                return candidate.open(self.user_id, event)
            except (InvalidTag, ValueError):
                continue
        raise KeyError("no key opens it")

    def retire(self, txn_id: str) -> None:
        """Drop keys no queued event can need. The gateway seals events when they arrive and
        sends them in order, so once a transaction's last event names key K, every event queued
        after it is sealed to K or a newer key. That transaction may still be sent again until the
        gateway has seen our 200; a transaction with another id arriving proves it has."""
        if self.retire_after is None or self.retire_after[0] == txn_id:
            return
        for kid in self.keyring.retire_before(self.retire_after[1]):
            say(f"retired key {kid}: no queued event needs it any more")
        self.retire_after = None


async def ping(gateway_url: str, token: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway_url.rstrip('/')}/v1/ping", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        answer = await resp.json(content_type=None)
        if resp.status == 200:
            say(f"pinged the gateway: {answer.get('pending', 0)} event(s) pending")
        else:
            say(f"ping refused by the gateway: {resp.status} {answer.get('error')}")


async def start_bot(gateway_url: str, token: str) -> Bot | None:
    bot = gateway_bot(gateway_url, token)
    try:
        await bot.initialize()  # getMe, answered by the gateway
    except TelegramError as exc:
        say(f"telegram through the gateway unavailable ({exc.message}); not answering messages")
        return None
    say(f"answering Telegram messages as @{bot.username}")
    return bot


async def serve(args: argparse.Namespace, keyring: Keyring, secrets: list[str]) -> None:
    gateway_url, token = os.environ.get("ALLY_GATEWAY_URL"), os.environ.get("ALLY_SERVER_TOKEN")
    bot = await start_bot(gateway_url, token) if gateway_url and token else None
    receiver = Receiver(keyring, args.user_id, secrets, bot)
    app = web.Application(client_max_size=16 << 20)
    app.router.add_put("/ally/v1/transactions/{txn_id}", receiver.transaction)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    say(f"user {args.user_id}, server_public_key {public_key_text(keyring.current)}")
    say(f"keys: {', '.join(f'{k.kid} ({k.suite})' for k in keyring.keys)}; current {keyring.current.kid}")
    say(f"listening on http://{args.host}:{port}")
    if gateway_url and token:
        try:
            await ping(gateway_url, token)
        except aiohttp.ClientError as exc:
            say(f"could not ping the gateway at {gateway_url}: {type(exc).__name__}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if bot is not None:
            await bot.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description="An example Ally dedicated server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--user-id", default="demo", help="the user id this server was registered as")
    parser.add_argument("--key-file", type=Path, default=Path(".ally/example-server.key"))
    parser.add_argument("--print-key", action="store_true", help="print the public key and exit")
    parser.add_argument(
        "--suite", choices=sorted(SUITES), default="mlkem768-x25519", help="kind of key made (default: hybrid)"
    )
    parser.add_argument("--new-key", action="store_true", help="make a new current key, print it and exit")
    args = parser.parse_args()
    keyring = Keyring.load_or_create(args.key_file, args.suite)
    if args.new_key:
        keyring.add(args.suite)
    if args.print_key or args.new_key:
        print(public_key_text(keyring.current))
        return 0
    secrets = [s.strip() for s in os.environ.get("ALLY_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        print("set ALLY_WEBHOOK_SECRET to the webhook_secret the admin API returned", file=sys.stderr)
        return 2
    asyncio.run(serve(args, keyring, secrets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
