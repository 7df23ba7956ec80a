"""The Telegram channel's running state: the bot, its Bot API client, limiter and chat directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import telegram
from aiohttp import web
from telegram.error import BadRequest, InvalidToken, TelegramError

from foundation.errors import ApiError, ClosedError, GatewayError, NotFound, TooManyRequests
from foundation.redis_keys import Keys
from routing.services import Services

from .chats import ChatInfo, Chats
from .identity import Identity
from .moves import Moves
from .notices import Notices
from .ratelimit import MAX_PAUSE, Limiter, Limits
from .wire import BotApi, Reply, Upload

log = logging.getLogger(__name__)

# What the webhook asks Telegram for: everything a user can do in a chat with the bot.
ALLOWED_UPDATES = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "callback_query",
    "my_chat_member",
    "message_reaction",
)
MAX_CONNECTIONS = 40
_NOT_POSTING = frozenset({"sendChatAction", "sendMessageDraft"})


def posts(method: str) -> bool:
    """Whether a call adds a message to its chat (what Telegram's 20 a minute per group counts)."""
    if method in _NOT_POSTING:
        return False
    return method.startswith("send") or method in ("copyMessage", "copyMessages", "forwardMessage", "forwardMessages")


GATEWAY_SENDER = "~gateway"
"""The limiter's name for the gateway's own replies (not a valid user id, so never a user's)."""


class RateLimited(TooManyRequests):
    """429 whose body also reads as Telegram's own flood-wait answer, for Bot API client libraries."""

    def body(self) -> dict[str, object]:
        seconds = max(1, int(self.retry_after + 0.999))
        return {
            **super().body(),
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {seconds}",
            "parameters": {"retry_after": seconds},
        }


class Telegram:
    def __init__(
        self,
        services: Services,
        identity: Identity,
        session: aiohttp.ClientSession,
        *,
        limits: Limits | None = None,
        register_webhook: bool = True,
    ) -> None:
        settings = services.settings
        self.services = services
        self.identity = identity
        self.bot_id = identity.bot_id
        self.keys: Keys = services.keys
        self.session = session
        self.api = BotApi(session, settings.telegram_api_url, identity.token)
        self.limiter = Limiter(services.redis, services.keys, identity.bot_id, limits)
        self.chats = Chats(services.redis, services.keys)
        self.notices = Notices(self, settings.offline_notice_after)
        self.moves = Moves(services.redis, services.keys)
        self.bot = telegram.Bot(
            identity.token,
            base_url=f"{settings.telegram_api_url}/bot",
            base_file_url=f"{settings.telegram_api_url}/file/bot",
        )
        self.webhook_url = f"{settings.public_url}/telegram/webhook/{identity.bot_id}"
        self._register_webhook = register_webhook
        self._username: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._register(), "telegram-register")

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.bot.shutdown()

    def _spawn(self, coro: Any, name: str) -> None:
        if self._closed:
            coro.close()
            raise ClosedError("telegram channel is closed")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register(self) -> None:
        """getMe, then setWebhook (idempotent at Telegram); retried until Telegram answers."""
        delay = 1.0
        while True:
            try:
                await self.bot.initialize()
                self._username = self.bot.username
                if self._register_webhook:
                    await self.bot.set_webhook(
                        url=self.webhook_url,
                        secret_token=self.identity.webhook_secret,
                        allowed_updates=list(ALLOWED_UPDATES),
                        max_connections=MAX_CONNECTIONS,
                    )
                    log.info("telegram webhook registered", extra={"bot_id": self.bot_id, "webhook": self.webhook_url})
                return
            except InvalidToken:
                log.error("telegram refused the bot token; the channel cannot send", extra={"bot_id": self.bot_id})
                return
            except BadRequest as exc:
                # Telegram refuses the URL itself (not https, a port it does not call): retrying won't help.
                log.error(
                    "telegram refused the webhook; updates will not arrive",
                    extra={"webhook": self.webhook_url, "reason": exc.message},
                )
                return
            except TelegramError as exc:
                # The text can hold the URL (and so the token); only the kind is logged.
                log.warning("telegram registration failed; retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 300.0)

    async def username(self) -> str:
        if self._username is None:
            try:
                await self.bot.initialize()
            except TelegramError:
                raise ApiError("telegram_unavailable", "could not learn the bot's username", status=503) from None
            self._username = self.bot.username
        return self._username

    async def profile(self) -> dict[str, Any]:
        """The bot's own `getMe` answer (asked once, kept)."""
        await self.username()
        return self.bot.bot.to_dict()

    # -- sending --------------------------------------------------------------------------

    async def send(
        self,
        user_id: str,
        method: str,
        params: Mapping[str, Any],
        uploads: Sequence[Upload] = (),
        chat: ChatInfo | None = None,
    ) -> Reply:
        """One Bot API call within the shared limits (every method counts against the caller's).

        A Telegram 429 pauses what it was for (`Limiter.flood`), then this retries once the
        pause is over, or answers 429 with `Retry-After` when that is later than `max_wait`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limiter.limits.max_wait
        chat_id = chat.chat_id if chat is not None else None
        while True:
            try:
                group = chat is not None and chat.is_group and posts(method)
                await self.limiter.acquire(user_id, chat_id, group=group)
            except TooManyRequests as exc:
                raise RateLimited(exc.code, exc.detail, retry_after=exc.retry_after) from None
            reply = await self.api.call(method, params, uploads)
            if reply.retry_after is None:
                return reply
            retry_after = min(reply.retry_after, MAX_PAUSE)
            scope = await self.limiter.flood(user_id, chat_id, retry_after, tenant=user_id != GATEWAY_SENDER)
            log.warning("telegram flood wait", extra={"retry_after": retry_after, "method": method, "paused": scope})
            if retry_after > deadline - loop.time():
                raise RateLimited("rate_limited", "Telegram asked to slow down", retry_after=retry_after)

    def reply_later(
        self,
        chat: ChatInfo,
        text: str,
        *,
        sender: str = GATEWAY_SENDER,
        reply_markup: dict[str, Any] | None = None,
    ) -> None:
        """A short message from the gateway itself (how to link...), sent after the webhook answered;
        `sender` is whose fair share of the limits it uses (a user's, for notices about their server)."""
        params: dict[str, Any] = {"chat_id": chat.chat_id, "text": text}
        if reply_markup is not None:
            params["reply_markup"] = reply_markup
        if not self._closed:
            self._spawn(self._own_call(sender, "sendMessage", params, chat), "telegram-reply")

    def answer_later(self, callback_query_id: str, text: str) -> None:
        """Answer a press of one of the gateway's own buttons (Telegram shows `text` to the presser)."""
        if not self._closed:
            params = {"callback_query_id": callback_query_id, "text": text}
            self._spawn(self._own_call(GATEWAY_SENDER, "answerCallbackQuery", params, None), "telegram-answer")

    async def _own_call(self, sender: str, method: str, params: dict[str, Any], chat: ChatInfo | None) -> None:
        try:
            reply = await self.send(sender, method, params, chat=chat)
            if not reply.ok:
                log.info("gateway reply refused by telegram", extra={"status": reply.status, "method": method})
        except GatewayError as exc:
            log.info("gateway reply not sent", extra={"error": type(exc).__name__, "method": method})
        except Exception:
            log.exception("gateway reply failed")


TELEGRAM = web.AppKey("telegram", Telegram)


def telegram_of(request: web.Request) -> Telegram:
    channel = request.app.get(TELEGRAM)
    if channel is None:
        raise NotFound("telegram_disabled", "the Telegram channel is not configured (ALLY_TELEGRAM_BOT_TOKEN)")
    return channel
