"""A minimal dedicated server: receives the gateway's transactions, verifies them, opens them.

    python examples/dedicated_server.py --print-key        # make (or load) the key, print the public key
    ALLY_WEBHOOK_SECRET=whsec_... python examples/dedicated_server.py

It does what every real dedicated server must do (docs/delivery.md, docs/sealing.md):
verify the Standard Webhooks signature with the user's webhook secret, answer a retried
transaction without handling it twice, open each sealed event with the server's X25519
private key, and answer 200 so the gateway sends the next transaction. Here "handling" an
event means printing its type and payload and, given the gateway's URL and the server token,
answering each Telegram message with python-telegram-bot through the gateway: a typing
action first, then the text echoed back (docs/telegram.md).

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
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from standardwebhooks import Webhook, WebhookVerificationError
from telegram import Bot, Update
from telegram.constants import ChatAction
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

# Contract §5: RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
REMEMBERED_TXNS = 10_000


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path) -> X25519PrivateKey:
    """The server's private key, created on first use; it never leaves this machine."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, X25519PrivateKey):
            raise SystemExit(f"{path} does not hold an X25519 private key")
        return key
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_text(key: X25519PrivateKey) -> str:
    """The form `PUT /admin/v1/users/{id}` takes: base64url of the raw 32-byte public key."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url(raw)


def open_event(key: X25519PrivateKey, user_id: str, event: dict[str, Any]) -> Any:
    info = f"ally-gateway/v1|{user_id}|{event['id']}".encode()
    return json.loads(SUITE.decrypt(unb64url(event["sealed"]), key, info=info))


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
    def __init__(self, key: X25519PrivateKey, user_id: str, secrets: list[str], bot: Bot | None = None) -> None:
        self.key = key
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
        transaction = json.loads(body)
        events = transaction["events"]
        say(f"{txn_id}: {len(events)} event(s)")
        for event in events:
            try:
                payload = open_event(self.key, self.user_id, event)
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
        self.handled[txn_id] = None
        if len(self.handled) > REMEMBERED_TXNS:
            self.handled.popitem(last=False)
        return web.json_response({"ok": True})


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


async def serve(args: argparse.Namespace, key: X25519PrivateKey, secrets: list[str]) -> None:
    gateway_url, token = os.environ.get("ALLY_GATEWAY_URL"), os.environ.get("ALLY_SERVER_TOKEN")
    bot = await start_bot(gateway_url, token) if gateway_url and token else None
    receiver = Receiver(key, args.user_id, secrets, bot)
    app = web.Application(client_max_size=16 << 20)
    app.router.add_put("/ally/v1/transactions/{txn_id}", receiver.transaction)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    say(f"user {args.user_id}, server_public_key {public_key_text(key)}")
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
    args = parser.parse_args()
    key = load_or_create_key(args.key_file)
    if args.print_key:
        print(public_key_text(key))
        return 0
    secrets = [s.strip() for s in os.environ.get("ALLY_WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        print("set ALLY_WEBHOOK_SECRET to the webhook_secret the admin API returned", file=sys.stderr)
        return 2
    asyncio.run(serve(args, key, secrets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
