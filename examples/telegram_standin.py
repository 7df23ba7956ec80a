"""A local stand-in for Telegram, so the whole path can be watched on one machine, offline.

    python examples/telegram_standin.py                  # listens on 127.0.0.1:8081
    ALLY_TELEGRAM_API_URL=http://127.0.0.1:8081 ALLY_TELEGRAM_BOT_TOKEN=123456789:... ./scripts/serve

It plays both sides of Telegram:
- the Bot API the gateway calls (`/bot<token>/<method>`, Telegram's `{"ok": ..., "result": ...}`
  answers): getMe, setWebhook (it remembers the webhook URL and secret), sendMessage and
  sendChatAction (printed), and a few more answered the way Telegram answers them;
- a person typing in a private chat: `POST /_user/say {"text": "..."}` turns the text into
  an Update, shaped as the Bot API documents it, and posts it to the gateway's webhook with
  the secret header, exactly as Telegram would; with no webhook set (the gateway runs with
  `ALLY_TELEGRAM_MODE=polling`) the update waits for the gateway's `getUpdates` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import signal
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

BOT_USERNAME = "AllyLocalBot"


def say(text: str) -> None:
    print(text, flush=True)


def ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)


class StandIn:
    def __init__(self) -> None:
        self.webhook_url: str | None = None
        self.secret: str | None = None
        # Seeded from the clock (milliseconds): the gateway keeps its dedup window across restarts,
        # so a restarted stand-in must never reuse an update_id of an earlier run.
        self.update_ids = itertools.count(int(time.time() * 1000))
        self.message_ids = itertools.count(1)
        self.pending: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def params(self, request: web.Request) -> dict[str, Any]:
        # The Bot API takes query strings, form bodies and JSON bodies alike.
        values: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                values.update(body)
        elif request.can_read_body:
            values.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return values

    async def bot_api(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        match = re.fullmatch(r"(\d+):[A-Za-z0-9_-]{20,}", token)
        if match is None:
            return error(401, "Unauthorized")
        p = await self.params(request)
        bot_id = int(match.group(1))
        if method == "getMe":
            return ok(
                {
                    "id": bot_id,
                    "is_bot": True,
                    "first_name": "Ally (local)",
                    "username": BOT_USERNAME,
                    "can_join_groups": True,
                    "can_read_all_group_messages": False,
                    "supports_inline_queries": False,
                }
            )
        if method == "setWebhook":
            self.webhook_url, self.secret = p.get("url"), p.get("secret_token")
            say(f"webhook set: {self.webhook_url}")
            return ok(True)
        if method == "deleteWebhook":
            self.webhook_url = None
            return ok(True)
        if method == "getUpdates":
            return await self.get_updates(p)
        if method == "getWebhookInfo":
            return ok({"url": self.webhook_url or "", "has_custom_certificate": False, "pending_update_count": 0})
        if method == "sendChatAction":
            say(f"bot → chat {p.get('chat_id')}: ({p.get('action')}…)")
            return ok(True)
        if method == "sendMessage":
            chat_id = int(p.get("chat_id", 0))
            say(f"bot → chat {chat_id}: {p.get('text')}")
            message = {
                "message_id": next(self.message_ids),
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                "from": {"id": bot_id, "is_bot": True, "first_name": "Ally (local)", "username": BOT_USERNAME},
                "text": p.get("text", ""),
            }
            return ok(message)
        return error(400, f"Bad Request: the local stand-in does not implement {method}")

    async def get_updates(self, p: dict[str, Any]) -> web.Response:
        """Long polling as the Bot API documents it: `offset` confirms every update below it."""
        if self.webhook_url is not None:
            return error(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(p.get("offset", 0))
        self.pending = [u for u in self.pending if u["update_id"] >= offset]
        if not self.pending:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), float(p.get("timeout", 0)))
        return ok(self.pending[: int(p.get("limit", 100))])

    async def user_says(self, request: web.Request) -> web.Response:
        """A person types `text` in their private chat with the bot."""
        body = await request.json()
        text = str(body["text"])
        chat_id = int(body.get("chat_id", 4242))
        person = {"id": chat_id, "is_bot": False, "first_name": str(body.get("first_name", "Alice"))}
        message: dict[str, Any] = {
            "message_id": next(self.message_ids),
            "from": person,
            "chat": {**{k: v for k, v in person.items() if k != "is_bot"}, "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}]
        update = {"update_id": next(self.update_ids), "message": message}
        if self.webhook_url is None:
            self.pending.append(update)
            self.arrived.set()
            say(f"chat {chat_id} → bot: {text}  (update {update['update_id']}, waiting for getUpdates)")
            return web.json_response({"update_id": update["update_id"], "queued_for": "getUpdates"})
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.secret or ""}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.webhook_url, json=update, headers=headers) as resp,
        ):
            say(f"chat {chat_id} → bot: {text}  (update {update['update_id']}, gateway answered {resp.status})")
            return web.json_response({"update_id": update["update_id"], "gateway_status": resp.status})


async def serve(host: str, port: int) -> None:
    standin = StandIn()
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", standin.bot_api)
    app.router.add_post("/_user/say", standin.user_says)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    say(f"telegram stand-in listening on http://{host}:{runner.addresses[0][1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description="A local stand-in for Telegram's Bot API and one user's chat.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
