"""Dedicated server → Telegram (contract §3): the allowlisted Bot API calls and the file proxy.

Every call acts only within the calling user's chats: `chat_id` must be one of them
(default: their private chat), file ids and callback query ids must have come from
their own chats. Answers are Telegram's own JSON; the bot token never appears.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web

from gateway import http
from gateway.auth import require_server
from gateway.errors import ApiError, BadRequest, Forbidden, NotFound
from gateway.http import error_response, json_response

from .channel import Telegram, telegram_of
from .chats import ChatInfo
from .ingress import file_ids
from .inputs import read_call, structured
from .split import LIMIT, split_message, utf16_len
from .wire import Reply, Upload, decode

log = logging.getLogger(__name__)

ALLOWED = (
    "sendMessage",
    "sendChatAction",
    "editMessageText",
    "editMessageReplyMarkup",
    "deleteMessage",
    "sendPhoto",
    "sendDocument",
    "sendVoice",
    "answerCallbackQuery",
    "getFile",
)
_CANONICAL = {m.lower(): m for m in ALLOWED}
CHAT_METHODS = frozenset(ALLOWED) - {"answerCallbackQuery", "getFile"}
FILE_PARAMS: dict[str, tuple[str, ...]] = {
    "sendPhoto": ("photo",),
    "sendDocument": ("document", "thumbnail"),
    "sendVoice": ("voice",),
}
CHUNK = 1 << 16


def passthrough(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type="application/json")


def _chat_id(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise Forbidden("chat_not_allowed", "chat_id must be the numeric id of one of this user's linked chats")


async def authorize(
    channel: Telegram, user_id: str, method: str, params: dict[str, Any], uploads: list[Upload]
) -> ChatInfo | None:
    """Check every id the call names against what this user owns; fill in the default chat."""
    chats = channel.chats
    if method in ("answerCallbackQuery", "getFile"):
        # These take no chat: a chat id given anyway (anyone's) is not passed on to Telegram.
        params.pop("chat_id", None)
    if method == "answerCallbackQuery":
        query = params.get("callback_query_id")
        if not isinstance(query, str) or not await chats.knows(user_id, "cbq", query):
            raise NotFound("unknown_callback_query", "no such callback query in this user's chats")
        return None
    if method == "getFile":
        file_id = params.get("file_id")
        if not isinstance(file_id, str) or not await chats.knows(user_id, "files", file_id):
            raise NotFound("unknown_file", "no such file in this user's chats")
        return None
    if params.get("inline_message_id") not in (None, ""):
        raise Forbidden("inline_message_unsupported", "inline messages cannot be tied to a user; use chat_id")
    raw = params.get("chat_id")
    if raw in (None, ""):
        default = await chats.private_chat(user_id)
        if default is None:
            raise NotFound("no_linked_chat", "this user has no linked private chat")
        params["chat_id"] = default
        chat_id = default
    else:
        chat_id = _chat_id(raw)
    info = await chats.chat_of(user_id, chat_id)
    if info is None:
        raise Forbidden("chat_not_allowed", "chat_id is not one of this user's linked chats")
    reply_to = structured(params.get("reply_parameters"))
    other = reply_to.get("chat_id") if isinstance(reply_to, dict) else None
    if other not in (None, "") and await chats.chat_of(user_id, _chat_id(other)) is None:
        raise Forbidden("chat_not_allowed", "reply_parameters.chat_id is not one of this user's linked chats")
    await _check_files(channel, user_id, method, params, uploads)
    return info


async def _check_files(
    channel: Telegram, user_id: str, method: str, params: dict[str, Any], uploads: list[Upload]
) -> None:
    fields = FILE_PARAMS.get(method, ())
    attached = {u.name for u in uploads}
    referenced: set[str] = set()
    for name in fields:
        value = params.get(name)
        if not isinstance(value, str) or not value:
            continue
        if value.startswith("attach://"):
            referenced.add(value.removeprefix("attach://"))
            if value.removeprefix("attach://") not in attached:
                raise BadRequest("invalid_parameter", f"{name} names an attachment that was not uploaded")
        elif not value.startswith(("https://", "http://")) and not await channel.chats.knows(user_id, "files", value):
            # A file id from someone else's chat must not be re-sent through the shared bot.
            raise NotFound("unknown_file", f"{name} is not a file from this user's chats")
    for up in uploads:
        if up.name not in fields and up.name not in referenced:
            raise BadRequest("unexpected_upload", f"{method} takes no file in {up.name!r}")


async def call(request: web.Request) -> web.StreamResponse:
    """POST /v1/telegram/{method}."""
    user_id = await require_server(request)
    channel = telegram_of(request)
    method = _CANONICAL.get(request.match_info["method"].lower())
    if method is None:
        raise NotFound("unknown_method", "allowed: " + ", ".join(ALLOWED))
    params, uploads = await read_call(request)
    chat = await authorize(channel, user_id, method, params, uploads)
    text = params.get("text")
    if method == "sendMessage" and isinstance(text, str) and utf16_len(text) > LIMIT and text.strip():
        return await _send_long(channel, user_id, params, text, chat)
    reply = await channel.send(user_id, method, params, uploads, chat)
    await _learn(channel, user_id, reply)
    return passthrough(reply)


async def _learn(channel: Telegram, user_id: str, reply: Reply) -> None:
    """File ids in what this user's server sent are this user's to use again."""
    if reply.ok and isinstance(reply.result, dict):
        ids = list(file_ids(reply.result))
        if ids:
            await channel.chats.remember(user_id, "files", ids)


async def _send_long(
    channel: Telegram, user_id: str, params: dict[str, Any], text: str, chat: ChatInfo | None
) -> web.Response:
    """Several messages in order; the answer is the first as `result` and all of them as `messages`."""
    entities = structured(params.get("entities"))
    parts = split_message(text, entities if isinstance(entities, list) else None)
    messages: list[Any] = []
    for index, (part, part_entities) in enumerate(parts):
        piece = {k: v for k, v in params.items() if k != "entities"}
        piece["text"] = part
        if part_entities:
            piece["entities"] = part_entities
        if index < len(parts) - 1:
            piece.pop("reply_markup", None)  # buttons belong under the last part
        if index > 0:
            piece.pop("reply_parameters", None)
            piece.pop("reply_to_message_id", None)
        try:
            reply = await channel.send(user_id, "sendMessage", piece, (), chat)
        except ApiError as exc:
            if not messages:
                raise
            failed = error_response(exc)
            body = {**exc.body(), "messages": messages}
            return json_response(
                body, status=exc.status, headers={k: v for k, v in failed.headers.items() if k == "Retry-After"}
            )
        if not reply.ok:
            return json_response({**reply.data, "messages": messages}, status=reply.status)
        messages.append(reply.result)
    return json_response({"ok": True, "result": messages[0] if messages else None, "messages": messages})


async def download(request: web.Request) -> web.StreamResponse:
    """GET /v1/telegram/files/{file_id}: the file's bytes, streamed; the token stays here."""
    user_id = await require_server(request)
    channel = telegram_of(request)
    file_id = request.match_info["file_id"]
    if len(file_id) > 512 or not await channel.chats.knows(user_id, "files", file_id):
        raise NotFound("unknown_file", "no such file in this user's chats")
    reply = await channel.send(user_id, "getFile", {"file_id": file_id})
    if not reply.ok:
        return passthrough(reply)
    path = reply.result.get("file_path") if isinstance(reply.result, dict) else None
    if not isinstance(path, str) or not path:
        raise NotFound("file_unavailable", "Telegram has no downloadable copy of this file")
    async with channel.api.download(path) as upstream:
        if upstream.status != 200:
            return passthrough(decode(upstream.status, await upstream.read()))
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": upstream.content_type or "application/octet-stream", "Cache-Control": "no-store"},
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await http.write_within(request, response, chunk)
        except ConnectionError:
            log.info("telegram file download abandoned by the caller")
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: cut the connection so the client sees a broken download.
            log.info("telegram file download broke off", extra={"error": type(exc).__name__})
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
