"""How the gateway read an Update with python-telegram-bot before it read the dict itself.

Kept, in the tests only, as the oracle the dict reader (`channels/telegram/updates.py`) is
checked against, and as the baseline of `bench/updates.py`: `parse_update` builds the
library's `Update` and checks the few fields routing relies on; the helpers are the ones
routing used (`chat_of`, `start_code`, `added_by`, `removed`, `writes`, and the `chat` and
`from` objects of `telegram.linked` / `telegram.unlinked`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from telegram import Message, Update

from channels.telegram.chats import ChatInfo
from foundation.errors import BadRequest

log = logging.getLogger(__name__)

_START = re.compile(r"^/start(?:@[A-Za-z0-9_]+)?\s+([A-Za-z0-9_-]{1,64})\s*$")
_JOINED = ("member", "administrator", "creator", "restricted")
_GONE = ("left", "kicked")


def parse_update(data: dict[str, Any]) -> Update:
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise BadRequest("invalid_update", "update_id must be a non-negative integer")
    try:
        update = Update.de_json(data, None)
        well_formed = _well_formed(update)
    except Exception:
        raise BadRequest("invalid_update", "the body is not a Telegram Update") from None
    if not well_formed:
        raise BadRequest("invalid_update", "the body is not a Telegram Update")
    return update


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(update: Update) -> bool:
    chat, user, message = update.effective_chat, update.effective_user, update.effective_message
    checks = [
        chat is None or (_int(chat.id) and isinstance(chat.type, str)),
        user is None or _int(user.id),
        update.callback_query is None or isinstance(update.callback_query.id, str),
    ]
    if isinstance(message, Message):
        checks += [
            message.text is None or isinstance(message.text, str),
            message.migrate_to_chat_id is None or _int(message.migrate_to_chat_id),
            message.migrate_from_chat_id is None or _int(message.migrate_from_chat_id),
            message.left_chat_member is None or _int(message.left_chat_member.id),
            all(_int(u.id) for u in message.new_chat_members or ()),
        ]
    member = update.my_chat_member
    if member is not None:
        checks += [
            isinstance(member.new_chat_member.status, str),
            isinstance(member.old_chat_member.status, str),
            _int(member.from_user.id),
        ]
    return all(checks)


def chat_of(update: Update) -> ChatInfo | None:
    chat = update.effective_chat
    if chat is not None:
        return ChatInfo(chat.id, chat.type, "", "")
    user = update.effective_user
    if user is not None and update.callback_query is not None:
        return ChatInfo(user.id, "private", "", "")
    return None


def start_code(message: Message | None) -> str | None:
    if message is None or not message.text:
        return None
    match = _START.match(message.text)
    return match.group(1) if match else None


def added_by(update: Update, bot_id: int) -> int | None:
    member = update.my_chat_member
    if member is not None and member.chat.type != "private":
        if member.new_chat_member.status in _JOINED and member.old_chat_member.status in _GONE:
            return member.from_user.id
        return None
    message = update.message
    if message is not None and message.chat.type != "private" and message.from_user is not None:
        if any(u.id == bot_id for u in message.new_chat_members or ()):
            return message.from_user.id
        if message.group_chat_created or message.supergroup_chat_created or message.channel_chat_created:
            return message.from_user.id
    return None


def removed(update: Update, bot_id: int) -> str | None:
    member = update.my_chat_member
    if member is not None and member.new_chat_member.status in _GONE:
        return str(member.new_chat_member.status)
    message = update.message
    if message is not None and message.left_chat_member is not None and message.left_chat_member.id == bot_id:
        return "left"
    return None


def writes(update: Update) -> bool:
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


def chat_json(update: Update, chat: ChatInfo) -> dict[str, Any]:
    if update.effective_chat is not None:
        return update.effective_chat.to_dict()
    return {"id": chat.chat_id, "type": chat.type}


def from_json(update: Update) -> dict[str, Any] | None:
    return update.effective_user.to_dict() if update.effective_user is not None else None
