"""Checking one Bot API call against the methods table and what the calling user owns.

Every parameter is read once into a plain value (JSON text parsed strictly, chat ids made
integers), every chat, message-source, file and callback query it names is checked, and the
checked values are what goes to Telegram: the caller's own text never does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from foundation.errors import BadRequest, Forbidden, NotFound

from . import jsontext
from .chats import ChatInfo, Chats
from .chats import Kind as Known
from .methods import MEDIA_FILES, REPLY_CHATS, Kind, Method
from .wire import Upload

ATTACH = "attach://"
_SCALARS = (str, int, float, bool)
_CHAT_ID = re.compile(r"-?[0-9]{1,16}")


@dataclass(slots=True)
class Checked:
    """A call that may go to Telegram: its parameters as they will be sent, and its chat."""

    params: dict[str, Any]
    chat: ChatInfo | None


@dataclass(slots=True)
class _Call:
    chats: Chats
    user_id: str
    method: Method
    uploads: Sequence[Upload]
    attached: set[str]


def chat_number(value: Any, name: str = "chat_id") -> int:
    """A chat id as Telegram reads it, or 403: usernames (`@name`) cannot be tied to a user."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _CHAT_ID.fullmatch(value.strip()):
        return int(value.strip())
    raise Forbidden("chat_not_allowed", f"{name} must be the numeric id of one of this user's linked chats")


async def check(chats: Chats, user_id: str, method: Method, raw: dict[str, Any], uploads: Sequence[Upload]) -> Checked:
    """The call as it may be sent, or the first refusal (nothing has been sent either way)."""
    if raw.get("inline_message_id") not in (None, ""):
        raise Forbidden("inline_message_unsupported", "inline messages cannot be tied to a user; use chat_id")
    for name in raw:
        if name not in method.params:
            raise BadRequest("invalid_parameter", f"{method.name} takes no parameter {name!r} through the gateway")
    call = _Call(chats, user_id, method, uploads, set())
    params: dict[str, Any] = {}
    chat: ChatInfo | None = None
    for name, value in raw.items():
        if value is None:
            continue
        kind = method.params[name]
        checked = await _one(call, name, kind, value)
        params[name] = checked
        if kind is Kind.CHAT:
            chat = await _own_chat(call, checked, name)
    if method.has_chat and chat is None:
        default = await chats.private_chat(user_id)
        if default is None:
            raise NotFound("no_linked_chat", "this user has no linked private chat")
        params["chat_id"] = default
        chat = await _own_chat(call, default, "chat_id")
    _check_uploads(call)
    return Checked(params, chat)


async def _one(call: _Call, name: str, kind: Kind, value: Any) -> Any:
    if kind.is_json:
        value = jsontext.loads(value, name) if isinstance(value, str) else value
        return await _json(call, name, kind, value)
    if not isinstance(value, _SCALARS):
        raise BadRequest("invalid_parameter", f"{name} must be a string, number or boolean")
    if kind is Kind.CHAT:
        return chat_number(value, name)
    if kind is Kind.SOURCE_CHAT:
        number = chat_number(value, name)
        await _own_chat(call, number, name)
        return number
    if kind is Kind.FILE:
        return await _file(call, name, value)
    if kind is Kind.FILE_ID:
        return await _known(call, "files", name, value)
    if kind is Kind.CALLBACK:
        return await _known(call, "cbq", name, value)
    return value


async def _own_chat(call: _Call, chat_id: int, name: str) -> ChatInfo:
    info = await call.chats.chat_of(call.user_id, chat_id)
    if info is None:
        raise Forbidden("chat_not_allowed", f"{name} is not one of this user's linked chats")
    return info


async def _known(call: _Call, kind: Known, name: str, value: Any) -> str:
    if not isinstance(value, str) or not await call.chats.knows(call.user_id, kind, value):
        if kind == "cbq":
            raise NotFound("unknown_callback_query", "no such callback query in this user's chats")
        raise NotFound("unknown_file", f"{name} is not a file from this user's chats")
    return value


async def _file(call: _Call, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("invalid_parameter", f"{name} must name a file")
    if value.startswith(ATTACH):
        part = value.removeprefix(ATTACH)
        if not any(u.name == part for u in call.uploads):
            raise BadRequest("invalid_parameter", f"{name} names an attachment that was not uploaded")
        call.attached.add(part)
        return value
    if value.startswith(("https://", "http://")):
        return value
    # A file id from someone else's chat must not be re-sent through the shared bot.
    return await _known(call, "files", name, value)


async def _json(call: _Call, name: str, kind: Kind, value: Any) -> Any:
    if kind in (Kind.ARRAY, Kind.MEDIA_LIST) and not isinstance(value, list):
        raise BadRequest("invalid_parameter", f"{name} must be a JSON array")
    if kind in (Kind.OBJECT, Kind.REPLY, Kind.MEDIA) and not isinstance(value, dict):
        raise BadRequest("invalid_parameter", f"{name} must be a JSON object")
    if kind is Kind.REPLY:
        for field in REPLY_CHATS:
            if value.get(field) is not None:
                value[field] = chat_number(value[field], f"{name}.{field}")
                await _own_chat(call, value[field], f"{name}.{field}")
    elif kind is Kind.MEDIA:
        await _media(call, name, value)
    elif kind is Kind.MEDIA_LIST:
        for index, item in enumerate(value):
            await _media(call, f"{name}[{index}]", item)
    return value


async def _media(call: _Call, name: str, item: Any) -> None:
    if not isinstance(item, dict):
        raise BadRequest("invalid_parameter", f"{name} must be an InputMedia object")
    for field in MEDIA_FILES:
        if item.get(field) is not None:
            item[field] = await _file(call, f"{name}.{field}", item[field])


def _check_uploads(call: _Call) -> None:
    files = set(call.method.of_kind(Kind.FILE))
    names = [u.name for u in call.uploads]
    if len(set(names)) != len(names):
        raise BadRequest("invalid_multipart", "two uploads have the same name")
    for upload in call.uploads:
        if upload.name not in files and upload.name not in call.attached:
            raise BadRequest("unexpected_upload", f"{call.method.name} takes no file in {upload.name!r}")
