"""Telling a chat that the assistant it writes to is away (contract §9.4).

Two short messages from the gateway itself, neither repeating anything anyone wrote:
- once per outage per chat, when the chat writes while the user's server has been failing
  for `ALLY_OFFLINE_NOTICE_AFTER` seconds: the assistant is offline, the message is kept;
- when held events expire (`ALLY_HOLD_TTL`): how many of the chat's messages were lost.

The bookkeeping (since when the server fails, which chats were told, which chat each held
event came from) is `routing/outage.py`'s; this module decides what counts as writing and what
the chat reads. Notices are sent as the user's own calls, so they share that user's fair part
of the bot's limits and cannot crowd out anyone else's messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from foundation import metrics
from routing.outage import Origin

from .chats import ChatInfo
from .updates import TelegramUpdate

if TYPE_CHECKING:
    from .channel import Telegram

log = logging.getLogger(__name__)

CHANNEL = "telegram"
OFFLINE = "Your assistant is offline right now. Your message is kept and will be delivered when the assistant is back."


def lost(count: int) -> str:
    noun = "message" if count == 1 else "messages"
    return f"{count} {noun} could not be delivered: your assistant was offline for too long."


def writes(update: TelegramUpdate) -> bool:
    """Someone wrote or pressed a button; joins, departures and upgrades are not writing."""
    if update.callback_query is not None:
        return True
    message = update.message or update.edited_message
    return (
        message is not None
        and message.from_user is not None
        and message.left_chat_member is None
        and not message.new_chat_members
        and message.migrate_to_chat_id is None
        and message.migrate_from_chat_id is None
    )


class Notices:
    def __init__(self, channel: Telegram, after: float) -> None:
        self._channel = channel
        self._after = after

    def origin(self, chat: ChatInfo, update: TelegramUpdate) -> Origin | None:
        """Where `update` came from, for the hand-over to record (None: it is not writing)."""
        if not writes(update):
            return None
        return Origin(CHANNEL, str(chat.chat_id), str(update.update_id), self._after)

    def tell(self, user_id: str, chat: ChatInfo) -> None:
        """The hand-over found the user's server away long enough: tell the chat, once."""
        metrics.TELEGRAM_NOTICES.labels("offline").inc()
        log.info("chat told its assistant is offline", extra={"user_id": user_id, "chat_type": chat.type})
        self._channel.reply_later(chat, OFFLINE, sender=user_id)

    async def expired(self, user_id: str, counts: dict[str, int]) -> None:
        """Messages of these chats passed the hold TTL undelivered: tell each chat how many."""
        linked = await self._channel.chats.of_user(user_id)
        for address, count in counts.items():
            chat_id = int(address)
            # A chat unlinked since still wrote those messages; Telegram's ids say private or not.
            chat = linked.get(chat_id) or ChatInfo(chat_id, "private" if chat_id > 0 else "group", "", "")
            metrics.TELEGRAM_NOTICES.labels("expired").inc()
            log.info("chat told of expired messages", extra={"user_id": user_id, "count": count})
            self._channel.reply_later(chat, lost(count), sender=user_id)
