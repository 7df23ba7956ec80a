"""Telegram → gateway: the webhook (contract §6), linking with `/start <code>`, and routing.

A translation table: an Update either belongs to a linked chat and is handed over
exactly as Telegram sent it, or changes a link (`/start`, the bot added to or removed
from a group, a group upgraded to a supergroup) and says so with `telegram.linked` /
`telegram.unlinked`. Updates of chats that are not linked are acknowledged and
dropped; nothing of them is stored, and the chat gets one short hint per hour.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web

from foundation import fastpath, metrics
from foundation.clock import iso
from foundation.errors import BadRequest, NotFound, Unauthorized
from foundation.http import json_response, read_json_object
from foundation.types import Event
from routing.access import admin_user
from routing.handoff import Item, NotLinked

from .channel import Telegram, telegram_of
from .chats import ChatInfo
from .moves import PREFIX as MOVE_PREFIX
from .moves import Move, Via
from .updates import TelegramUpdate, added_by, chat_of, file_ids, parse_update, removed, start_code

__all__ = ["file_ids", "parse_update", "receive", "webhook"]

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET_FIELD = SECRET_HEADER.lower()
MAX_UPDATE = 1 << 20
HINT_EVERY = 3600
BAD_CODE_EVERY = 60

HINT_UNLINKED = (
    "Hello! This is Ally's assistant bot. To connect this chat to your assistant, "
    "open the Telegram link in your Ally settings."
)
HINT_BAD_CODE = (
    "This link has expired or was already used. Please create a new one in your Ally settings "
    "and open it within 15 minutes."
)
HINT_GROUP = (
    "To use Ally in this group, first connect your private chat with this bot (the Telegram link in "
    "your Ally settings), then add the bot to the group again."
)
ASK_MOVE = {
    "start": (
        "This chat is connected to another Ally account. To connect it to the account whose link "
        "you just opened instead, press the button within 15 minutes."
    ),
    "group": (
        "This group is connected to another Ally account. Only the person who just added the bot can "
        "move it to their own account, with the button below, within 15 minutes."
    ),
}
MOVE_BUTTON = "Move this chat to the new account"
MOVED = "Done: this chat is now connected to the new account."
MOVE_EXPIRED = "This button has expired or was already used. Open a new link from your Ally settings."
MOVE_NOT_YOURS = "Only the person who opened the link (or added the bot) can confirm this."
ASK_EVERY = 60


def _chat_json(update: TelegramUpdate, chat: ChatInfo) -> dict[str, Any]:
    if update.effective_chat is not None:
        return update.effective_chat.as_json()
    return {"id": chat.chat_id, "type": chat.type}


def _from_json(update: TelegramUpdate) -> dict[str, Any] | None:
    return update.effective_user.as_json() if update.effective_user is not None else None


class Ingress:
    def __init__(self, channel: Telegram) -> None:
        self.tg = channel
        self.chats = channel.chats
        self.bot_id = int(channel.bot_id)

    async def accept(self, update: TelegramUpdate, raw: dict[str, Any]) -> None:
        chat = chat_of(update)
        if chat is None:
            metrics.DROPPED.labels("telegram", "no_chat").inc()
            return
        code = start_code(update.message) if chat.type == "private" else None
        if code is not None:
            await self._start(update, chat, code)
            return
        query = update.callback_query
        if query is not None and isinstance(query.data, str) and query.data.startswith(MOVE_PREFIX):
            await self._confirm(update, chat, query.data)
            return
        # No separate erasure check on this path: the hand-over refuses a user being erased in the
        # same atomic step as the write, and `_handoff` then unlinks the chat.
        cached = self.chats.cached_owner(chat.chat_id)
        if cached is not None and await self._routed(update, chat, cached, raw):
            return
        owner = await self.chats.routed_owner(chat.chat_id)
        items: list[Item] = []
        linked_before = owner is not None
        if owner is None:
            owner, items = await self._adopt(update, chat)
        if owner is None:
            await self._unlinked(update, chat)
            return
        items.append(self._update_item(update, raw))
        items += await self._after(update, chat, owner)
        await self._remember(update, owner, raw)
        if await self._hand_over(update, chat, owner, items) and linked_before:
            await self._readopt(update, chat, owner)

    async def _routed(self, update: TelegramUpdate, chat: ChatInfo, owner: str, raw: dict[str, Any]) -> bool:
        """The common case in one round trip: a chat this process routed before, an update that
        changes no link and names no file or button. False (nothing done) when the update needs
        the full path, or the cached owner no longer holds the chat."""
        if (
            update.callback_query is not None
            or added_by(update, self.bot_id) is not None
            or removed(update, self.bot_id) is not None
            or (update.message is not None and update.message.migrate_to_chat_id is not None)
            or next(file_ids(raw), None) is not None
        ):
            # What a server may name is recorded for the chat's owner as read now, never for a
            # cached one that the chat may have left.
            return False
        try:
            await self._hand_over(update, chat, owner, [self._update_item(update, raw)], linked=True)
        except NotLinked:
            self.chats.forget_route(chat.chat_id)
            return False
        return True

    @staticmethod
    def _update_item(update: TelegramUpdate, raw: dict[str, Any]) -> Item:
        return Item(Event("telegram.update", "telegram", raw), dedup=str(update.update_id))

    async def _hand_over(
        self, update: TelegramUpdate, chat: ChatInfo, owner: str, items: list[Item], *, linked: bool = False
    ) -> bool:
        """Queue `items` for `owner`, recorded as written from `chat` when `update` is writing; with
        `linked`, only while the chat is still the owner's (else `NotLinked`). False when the
        owner is gone (the chat is then unlinked)."""
        origin = self.tg.notices.origin(chat, update)
        condition = self.chats.linked(chat.chat_id) if linked else None
        try:
            done = await self.tg.services.handoff.hand_over(
                owner, items, dedup_scope=self._scope, linked=condition, origin=origin
            )
        except NotFound:
            await self._gone(owner, chat)
            return False
        if done.tell:
            self.tg.notices.tell(owner, chat)
        return True

    async def _remember(self, update: TelegramUpdate, owner: str, raw: dict[str, Any]) -> None:
        """The file ids and callback query this update gives the user's server to name."""
        files = list(file_ids(raw))
        if files:
            await self.chats.remember(owner, "files", files)
        if update.callback_query is not None:
            await self.chats.remember(owner, "cbq", [update.callback_query.id])

    async def _owner(self, chat_id: int) -> str | None:
        owner = await self.chats.owner(chat_id)
        if owner is not None and await self.tg.services.eraser.is_erasing(owner):
            return None
        return owner

    @property
    def _scope(self) -> str:
        return f"tg:{self.tg.bot_id}"

    async def _handoff(self, user_id: str, items: list[Item], chat: ChatInfo) -> int:
        """How many of `items` were queued (0: all repeats, or the user is gone)."""
        try:
            return await self.tg.services.handoff(user_id, items, dedup_scope=self._scope)
        except NotFound:
            await self._gone(user_id, chat)
            return 0

    async def _gone(self, user_id: str, chat: ChatInfo) -> None:
        # The user was erased between lookup and hand-over: the chat is no longer linked, and
        # nothing may be left under the user's tag after its erasure deleted it.
        await self.chats.unlink(user_id, chat.chat_id)
        await self.chats.purge(user_id)
        metrics.DROPPED.labels("telegram", "user_gone").inc()

    async def _start(self, update: TelegramUpdate, chat: ChatInfo, code: str) -> None:
        redemption = await self.chats.redeem(code, chat.chat_id)
        user_id = redemption.user_id
        usable = redemption.state in ("fresh", "replay")
        if usable and (
            not await self.tg.services.registry.exists(user_id) or await self.tg.services.eraser.is_erasing(user_id)
        ):
            usable = False
        if not usable:
            metrics.DROPPED.labels("telegram", "bad_link_code").inc()
            await self._hint(chat, HINT_BAD_CODE, "code", BAD_CODE_EVERY)
            return
        current = await self._owner(chat.chat_id)
        if current is not None and current != user_id and update.effective_user is not None:
            # Someone else's link must not take over this chat by one tap (it may have been sent
            # to this person to do just that): the person in the chat confirms first.
            await self._ask_move(chat, user_id, update.effective_user.id, "start")
            return
        await self._move(update, chat, user_id, "start")

    async def _move(self, update: TelegramUpdate, chat: ChatInfo, user_id: str, via: str) -> None:
        """Link the chat to `user_id`; the user it was linked to hears `telegram.unlinked`."""
        previous = await self.chats.link(user_id, chat.chat_id, chat.type, via)
        uid = update.update_id
        if previous is not None:
            await self._handoff(previous, [self._unlinked_item(update, chat, "relinked")], chat)
        event = Event("telegram.linked", "telegram", self._linked_payload(update, chat, via))
        await self._handoff(user_id, [Item(event, dedup=f"{uid}:linked")], chat)
        log.info("telegram chat linked", extra={"user_id": user_id, "chat_type": chat.type, "via": via})

    async def _readopt(self, update: TelegramUpdate, chat: ChatInfo, owner: str) -> None:
        """The bot added to a group linked to another user: the person who added it may confirm a move."""
        adder = added_by(update, self.bot_id)
        target = await self._owner(adder) if adder is not None else None
        if adder is not None and target is not None and target != owner:
            await self._ask_move(chat, target, adder, "group")

    async def _ask_move(self, chat: ChatInfo, user_id: str, confirmer: int, via: Via) -> None:
        # One question a minute per chat: Telegram's retries and repeated taps ask nothing new.
        if not await self._once(chat, "move", ASK_EVERY):
            return
        data = await self.tg.moves.propose(user_id, chat.chat_id, chat.type, confirmer, via)
        markup = {"inline_keyboard": [[{"text": MOVE_BUTTON, "callback_data": data}]]}
        self.tg.reply_later(chat, ASK_MOVE[via], reply_markup=markup)
        log.info("telegram chat move awaits confirmation", extra={"user_id": user_id, "via": via})

    async def _confirm(self, update: TelegramUpdate, chat: ChatInfo, data: str) -> None:
        """A press of the gateway's own move button; never forwarded to any server."""
        query = update.callback_query
        assert query is not None
        move = await self.tg.moves.read(data)
        answer = MOVE_EXPIRED
        if move is not None and (query.from_user.id != move.confirmer or chat.chat_id != move.chat_id):
            answer = MOVE_NOT_YOURS
            metrics.DROPPED.labels("telegram", "move_not_confirmer").inc()
        elif move is not None and await self._still_valid(move) and await self.tg.moves.take(data):
            info = ChatInfo(move.chat_id, move.chat_type, "", "")
            await self._move(update, info, move.user_id, move.via)
            answer = MOVED
        self.tg.answer_later(query.id, answer)

    async def _still_valid(self, move: Move) -> bool:
        services = self.tg.services
        return await services.registry.exists(move.user_id) and not await services.eraser.is_erasing(move.user_id)

    async def _adopt(self, update: TelegramUpdate, chat: ChatInfo) -> tuple[str | None, list[Item]]:
        """A chat not linked yet that becomes linked by this very update (bot added, group upgraded)."""
        adder = added_by(update, self.bot_id)
        via, source = "group", adder
        message = update.message
        if adder is None and message is not None and message.migrate_from_chat_id is not None:
            via, source = "migrated", message.migrate_from_chat_id
        if source is None:
            return None, []
        owner = await self._owner(source)
        if owner is None:
            if adder is not None:
                await self._hint(chat, HINT_GROUP, "group", HINT_EVERY)
            return None, []
        await self.chats.link(owner, chat.chat_id, chat.type, via)
        log.info("telegram chat linked", extra={"user_id": owner, "chat_type": chat.type, "via": via})
        event = Event("telegram.linked", "telegram", self._linked_payload(update, chat, via))
        return owner, [Item(event, dedup=f"{update.update_id}:linked")]

    async def _after(self, update: TelegramUpdate, chat: ChatInfo, owner: str) -> list[Item]:
        """Link changes this update makes for a chat that is linked: removal, supergroup upgrade."""
        reason = removed(update, self.bot_id)
        if reason is not None:
            await self.chats.unlink(owner, chat.chat_id)
            log.info("telegram chat unlinked", extra={"user_id": owner, "chat_type": chat.type, "reason": reason})
            return [self._unlinked_item(update, chat, reason)]
        message = update.message
        if message is not None and message.migrate_to_chat_id is not None:
            new_chat = ChatInfo(message.migrate_to_chat_id, "supergroup", "", "")
            # The supergroup's own first message may have linked it already (`migrate_from_chat_id`).
            known = await self.chats.owner(new_chat.chat_id) == owner
            await self.chats.link(owner, new_chat.chat_id, "supergroup", "migrated")
            await self.chats.unlink(owner, chat.chat_id)
            linked = {
                "chat": {"id": new_chat.chat_id, "type": "supergroup"},
                "from": _from_json(update),
                "via": "migrated",
                "update_id": update.update_id,
            }
            items = [self._unlinked_item(update, chat, "migrated")]
            if not known:
                items.append(Item(Event("telegram.linked", "telegram", linked), dedup=f"{update.update_id}:linked"))
            return items
        return []

    def _linked_payload(self, update: TelegramUpdate, chat: ChatInfo, via: str) -> dict[str, Any]:
        return {
            "chat": _chat_json(update, chat),
            "from": _from_json(update),
            "via": via,
            "update_id": update.update_id,
            "linked_at": iso(time.time()),
        }

    def _unlinked_item(self, update: TelegramUpdate, chat: ChatInfo, reason: str) -> Item:
        payload = {"chat": _chat_json(update, chat), "reason": reason, "update_id": update.update_id}
        return Item(Event("telegram.unlinked", "telegram", payload), dedup=f"{update.update_id}:unlinked")

    async def _unlinked(self, update: TelegramUpdate, chat: ChatInfo) -> None:
        metrics.DROPPED.labels("telegram", "unlinked_chat").inc()
        joined = added_by(update, self.bot_id) is not None  # already told how (HINT_GROUP)
        if update.message is not None and not joined and removed(update, self.bot_id) is None:
            await self._hint(chat, HINT_UNLINKED, "unlinked", HINT_EVERY)

    async def _hint(self, chat: ChatInfo, text: str, kind: str, every: int) -> None:
        if await self._once(chat, kind, every):
            self.tg.reply_later(chat, text)

    async def _once(self, chat: ChatInfo, kind: str, every: int) -> bool:
        """True at most once per `every` seconds for this chat and kind, across processes."""
        # The chat id is hashed: the gateway keeps no readable trace of chats it does not serve.
        digest = hashlib.sha256(f"{self.tg.bot_id}:{chat.chat_id}".encode()).hexdigest()[:32]
        key = self.tg.keys.global_key(f"tg:hint:{kind}:{digest}")
        return bool(await self.tg.services.redis.set(key, b"1", nx=True, ex=every))


async def webhook(request: web.Request) -> web.Response:
    channel = telegram_of(request)
    if request.match_info["bot_id"] != channel.bot_id:
        metrics.WEBHOOK_REJECTED.labels("telegram", "unknown_bot").inc()
        raise NotFound("unknown_bot", "no such bot")
    if not channel.identity.secret_ok(request.headers.get(SECRET_HEADER)):
        metrics.WEBHOOK_REJECTED.labels("telegram", "bad_secret").inc()
        raise Unauthorized("bad_secret", "missing or wrong X-Telegram-Bot-Api-Secret-Token")
    try:
        data = await read_json_object(request, limit=MAX_UPDATE)
    except BadRequest:
        metrics.WEBHOOK_REJECTED.labels("telegram", "malformed").inc()
        raise
    await receive(channel, data)
    return json_response({"ok": True})


def fast_webhook(channel: Telegram) -> fastpath.Route:
    """`webhook` for `foundation.fastpath`: a request that passes its checks (this bot, the secret,
    a JSON object) is received there; any other is left to `webhook`, which answers it."""
    prefix = "/telegram/webhook/"

    def take(request: fastpath.Request) -> Awaitable[bytes] | None:
        if request.path != prefix + channel.bot_id or not channel.identity.secret_ok(request.headers.get(SECRET_FIELD)):
            return None
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return None
        return _received(channel, data) if isinstance(data, dict) else None

    return fastpath.Route(prefix, prefix + "{bot_id}", MAX_UPDATE, take)


async def _received(channel: Telegram, data: dict[str, Any]) -> bytes:
    await receive(channel, data)
    return b'{"ok":true}'


async def receive(channel: Telegram, data: dict[str, Any]) -> None:
    """One Update, from the webhook or from `getUpdates`; returns once it is durably queued."""
    try:
        update = parse_update(data)
    except BadRequest:
        metrics.WEBHOOK_REJECTED.labels("telegram", "malformed").inc()
        raise
    await Ingress(channel).accept(update, data)


async def create_link(request: web.Request) -> web.Response:
    """POST /admin/v1/users/{user_id}/telegram/link: a one-use deep link, valid 15 minutes."""
    _services, user_id = await admin_user(request)
    return json_response(await new_link(telegram_of(request), user_id))


async def new_link(channel: Telegram, user_id: str) -> dict[str, Any]:
    """A one-use deep link for `user_id` (also `ally-gateway user link`)."""
    username = await channel.username()
    code, expires = await channel.chats.new_code(user_id)
    log.info("telegram link created", extra={"user_id": user_id})
    return {"url": f"https://t.me/{username}?start={code}", "code": code, "expires_at": iso(expires)}
