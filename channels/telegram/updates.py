"""Reading a Telegram Update: is it well formed, which chat and person it is about, and what it
says about links (`/start <code>`, the bot added to or removed from a chat).

The webhook reads the dict once into a `TelegramUpdate` that holds only what routing needs;
the update itself is forwarded as Telegram sent it. The names follow python-telegram-bot's
(`effective_chat`, `effective_user`, `callback_query`, `from_user`...), and so do the rules
for which chat and person an update is about, kind by kind (`Update.effective_chat` and
`Update.effective_user` in version 22.8; `tests/channels/test_telegram_updates.py` checks the
two agree).

Every field routing reads is checked, in every part of the update, not only in the part that
decides: ids are integers (not booleans) within 64 bits, types, statuses, texts and callback
data are strings, objects are objects; a chat, a person, a message, a button press or a
member change without the fields that make it one is refused. Fields routing does not read
are not looked at: they reach the user's server as they came.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeGuard

from foundation.errors import BadRequest

from .chats import ChatInfo

log = logging.getLogger(__name__)

_START = re.compile(r"^/start(?:@[A-Za-z0-9_]+)?\s+([A-Za-z0-9_-]{1,64})\s*$")
_JOINED = ("member", "administrator", "creator", "restricted")
_GONE = ("left", "kicked")
_INT64 = 1 << 63

# The view is made of named tuples: immutable like a frozen dataclass, and built three to four
# times faster, which matters at a few objects per update on the webhook's hot path.


class Chat(NamedTuple):
    id: int
    type: str
    sent: dict[str, Any]  # the chat object as Telegram sent it (read only)

    def as_json(self) -> dict[str, Any]:
        return dict(self.sent)


class User(NamedTuple):
    id: int
    sent: dict[str, Any]  # the user object as Telegram sent it (read only)

    def as_json(self) -> dict[str, Any]:
        return dict(self.sent)


class Message(NamedTuple):
    chat: Chat
    from_user: User | None
    text: str | None
    new_chat_members: tuple[int, ...]
    left_chat_member: int | None
    migrate_to_chat_id: int | None
    migrate_from_chat_id: int | None
    chat_created: bool  # group_chat_created, supergroup_chat_created or channel_chat_created


class CallbackQuery(NamedTuple):
    id: str
    from_user: User
    data: str | None


class MemberUpdate(NamedTuple):
    """A `my_chat_member` update: the bot's own membership changed."""

    chat: Chat
    from_user: User
    old_status: str
    new_status: str


class TelegramUpdate(NamedTuple):
    update_id: int
    effective_chat: Chat | None
    effective_user: User | None
    message: Message | None
    edited_message: Message | None
    callback_query: CallbackQuery | None
    my_chat_member: MemberUpdate | None


class _Malformed(Exception):
    def __init__(self, where: str, key: str = "") -> None:
        self.where = f"{where}.{key}" if key else where


def _int(value: object) -> TypeGuard[int]:
    return type(value) is int and -_INT64 <= value < _INT64


def _object(value: object, where: str, key: str = "") -> dict[str, Any]:
    if type(value) is not dict:
        raise _Malformed(where, key)
    return value


def _chat(parent: dict[str, Any], where: str) -> Chat:
    value = parent.get("chat")
    if type(value) is dict:
        chat_id, kind = value.get("id"), value.get("type")
        if _int(chat_id) and type(kind) is str:
            return Chat(chat_id, kind, value)
    raise _Malformed(where, "chat")


def _user(value: object, where: str, key: str) -> User:
    if type(value) is dict:
        user_id = value.get("id")
        if _int(user_id) and type(value.get("is_bot")) is bool and type(value.get("first_name")) is str:
            return User(user_id, value)
    raise _Malformed(where, key)


def _person(parent: dict[str, Any], key: str, where: str, *, required: bool = True) -> User | None:
    value = parent.get(key)
    if value is None and not required:
        return None
    return _user(value, where, key)


def _optional_int(parent: dict[str, Any], key: str, where: str) -> int | None:
    value = parent.get(key)
    if value is not None and not _int(value):
        raise _Malformed(where, key)
    return value


def _optional_str(parent: dict[str, Any], key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is not None and type(value) is not str:
        raise _Malformed(where, key)
    return value


def _flag(parent: dict[str, Any], key: str, where: str) -> bool:
    value = parent.get(key)
    if value is not None and type(value) is not bool:
        raise _Malformed(where, key)
    return value is True


def _message(value: dict[str, Any], where: str) -> Message:
    if not _int(value.get("message_id")):
        raise _Malformed(where, "message_id")
    if not _int(value.get("date")):
        raise _Malformed(where, "date")
    joined: tuple[int, ...] = ()
    members = value.get("new_chat_members")
    if members is not None:
        if type(members) is not list:
            raise _Malformed(where, "new_chat_members")
        joined = tuple(_user(member, where, "new_chat_members").id for member in members)
    left = _person(value, "left_chat_member", where, required=False)
    created = (
        _flag(value, "group_chat_created", where)
        | _flag(value, "supergroup_chat_created", where)
        | _flag(value, "channel_chat_created", where)
    )
    return Message(
        _chat(value, where),
        _person(value, "from", where, required=False),
        _optional_str(value, "text", where),
        joined,
        left.id if left is not None else None,
        _optional_int(value, "migrate_to_chat_id", where),
        _optional_int(value, "migrate_from_chat_id", where),
        created,
    )


def _status(parent: dict[str, Any], key: str, where: str) -> str:
    member = _object(parent.get(key), where, key)
    _user(member.get("user"), f"{where}.{key}", "user")
    status = member.get("status")
    if type(status) is not str:
        raise _Malformed(f"{where}.{key}", "status")
    return status


# Each kind of Update, read: the chat it names, the person it names, and the part itself for the
# kinds routing looks further into.
_Part = tuple[Chat | None, User | None, object]
_Reader = Callable[[dict[str, Any], str], _Part]


def _read_message(value: dict[str, Any], where: str) -> _Part:
    message = _message(value, where)
    return message.chat, message.from_user, message


def _read_callback(value: dict[str, Any], where: str) -> _Part:
    query_id = value.get("id")
    if type(query_id) is not str:
        raise _Malformed(where, "id")
    query = CallbackQuery(query_id, _user(value.get("from"), where, "from"), _optional_str(value, "data", where))
    shown = value.get("message")
    if shown is None:
        # A button under an inline message: there is no message, and so no chat.
        return None, query.from_user, query
    return _message(_object(shown, where, "message"), f"{where}.message").chat, query.from_user, query


def _read_member(value: dict[str, Any], where: str) -> _Part:
    old, new = _status(value, "old_chat_member", where), _status(value, "new_chat_member", where)
    update = MemberUpdate(_chat(value, where), _user(value.get("from"), where, "from"), old, new)
    return update.chat, update.from_user, update


def _reader(chat: bool, person: str | None, *, person_required: bool = True) -> _Reader:
    def read(value: dict[str, Any], where: str) -> _Part:
        found = _chat(value, where) if chat else None
        user = _person(value, person, where, required=person_required) if person is not None else None
        return found, user, None

    return read


_READERS: dict[str, _Reader] = {
    "message": _read_message,
    "edited_message": _read_message,
    "channel_post": _read_message,
    "edited_channel_post": _read_message,
    "business_message": _read_message,
    "edited_business_message": _read_message,
    "guest_message": _read_message,
    "callback_query": _read_callback,
    "my_chat_member": _read_member,
    "chat_member": _read_member,
    "deleted_business_messages": _reader(True, None),
    "chat_join_request": _reader(True, "from"),
    "chat_boost": _reader(True, None),
    "removed_chat_boost": _reader(True, None),
    "message_reaction": _reader(True, "user", person_required=False),
    "message_reaction_count": _reader(True, None),
    "inline_query": _reader(False, "from"),
    "chosen_inline_result": _reader(False, "from"),
    "shipping_query": _reader(False, "from"),
    "pre_checkout_query": _reader(False, "from"),
    "poll_answer": _reader(False, "user", person_required=False),
    "business_connection": _reader(False, "user"),
    "purchased_paid_media": _reader(False, "from"),
    "managed_bot": _reader(False, "user"),
    "poll": _reader(False, None),
}

# When an update carries several parts, the first of these that is present decides its chat
# (a button press only when it has a message) and its person, as in `Update.effective_chat` and
# `Update.effective_user`.
_CHAT_ORDER = (
    "message", "edited_message", "channel_post", "edited_channel_post", "business_message",
    "edited_business_message", "deleted_business_messages", "guest_message", "callback_query", "my_chat_member",
    "chat_member", "chat_join_request", "chat_boost", "removed_chat_boost", "message_reaction",
    "message_reaction_count",
)  # fmt: skip
_USER_ORDER = (
    "message", "edited_message", "business_message", "edited_business_message", "guest_message", "channel_post",
    "edited_channel_post", "inline_query", "chosen_inline_result", "callback_query", "shipping_query",
    "pre_checkout_query", "poll_answer", "my_chat_member", "chat_member", "chat_join_request", "message_reaction",
    "business_connection", "purchased_paid_media", "managed_bot",
)  # fmt: skip
_CHAT_RANK = {kind: rank for rank, kind in enumerate(_CHAT_ORDER)}
_USER_RANK = {kind: rank for rank, kind in enumerate(_USER_ORDER)}
_LAST = len(_READERS)


def parse_update(data: dict[str, Any]) -> TelegramUpdate:
    """The Update in `data` (a parsed JSON object), or `BadRequest("invalid_update")`."""
    update_id = data.get("update_id")
    if not _int(update_id) or update_id < 0:
        raise BadRequest("invalid_update", "update_id must be a non-negative integer")
    try:
        return _read(update_id, data)
    except _Malformed as exc:
        # Only the shape is logged: an Update the gateway cannot read (say, from an older self-hosted
        # Bot API server) is then visible to operators without any of its content.
        kinds = sorted(k for k in data if k != "update_id")[:5]
        log.warning("telegram update not readable", extra={"kinds": kinds, "field": exc.where})
        raise BadRequest("invalid_update", "the body is not a Telegram Update") from None


def _read(update_id: int, data: dict[str, Any]) -> TelegramUpdate:
    chat: Chat | None = None
    user: User | None = None
    chat_rank = user_rank = _LAST
    parts: dict[str, object] = {}
    for kind, value in data.items():
        read = _READERS.get(kind)
        if read is None or value is None:
            continue
        found, person, part = read(_object(value, kind), kind)
        parts[kind] = part
        rank = _CHAT_RANK.get(kind, _LAST)
        if found is not None and rank < chat_rank:
            chat, chat_rank = found, rank
        rank = _USER_RANK.get(kind, _LAST)
        if rank < user_rank:
            user, user_rank = person, rank
    message, edited = parts.get("message"), parts.get("edited_message")
    query, member = parts.get("callback_query"), parts.get("my_chat_member")
    return TelegramUpdate(
        update_id,
        chat,
        user,
        message if isinstance(message, Message) else None,
        edited if isinstance(edited, Message) else None,
        query if isinstance(query, CallbackQuery) else None,
        member if isinstance(member, MemberUpdate) else None,
    )


def chat_of(update: TelegramUpdate) -> ChatInfo | None:
    chat = update.effective_chat
    if chat is not None:
        return ChatInfo(chat.id, chat.type, "", "")
    user = update.effective_user
    if user is not None and update.callback_query is not None:
        # A button under an inline message: the private chat with that person (same id).
        return ChatInfo(user.id, "private", "", "")
    return None


def start_code(message: Message | None) -> str | None:
    if message is None or not message.text:
        return None
    match = _START.match(message.text)
    return match.group(1) if match else None


def added_by(update: TelegramUpdate, bot_id: int) -> int | None:
    """The Telegram user who just brought the bot into a group or channel, if this update says so."""
    member = update.my_chat_member
    if member is not None and member.chat.type != "private":
        if member.new_status in _JOINED and member.old_status in _GONE:
            return member.from_user.id
        return None
    message = update.message
    if message is None or message.chat.type == "private" or message.from_user is None:
        return None
    return message.from_user.id if bot_id in message.new_chat_members or message.chat_created else None


def removed(update: TelegramUpdate, bot_id: int) -> str | None:
    """'kicked' or 'left' when this update takes the bot out of the chat (or the user blocked it)."""
    member = update.my_chat_member
    if member is not None and member.new_status in _GONE:
        return member.new_status
    message = update.message
    if message is not None and message.left_chat_member == bot_id:
        return "left"
    return None


def file_ids(value: Any) -> Iterator[str]:
    """Every string under a `file_id` key anywhere in `value`, in document order (only objects
    and arrays are walked into: a leaf costs no generator of its own)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "file_id" and isinstance(item, str):
                yield item
            elif isinstance(item, dict | list):
                yield from file_ids(item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                yield from file_ids(item)
