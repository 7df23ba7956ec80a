"""Dedicated server → Telegram (contract §3, §9.4): the Bot API calls of the methods table and
the file proxy.

Every call is checked against the table (`methods`) and what its user owns (`policy`) before
anything is sent: chats, message sources, files and callback queries must all be the caller's.
Answers are Telegram's own JSON, except `getMe` (the bot's public profile, from the gateway's
copy) and `getFile` (a `file_path` the gateway serves); the bot token never appears.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from foundation import http
from foundation.errors import ApiError, NotFound
from foundation.http import error_response, json_response
from routing.access import require_server

from .channel import Telegram, telegram_of
from .chats import ChatInfo
from .inputs import read_call
from .methods import METHODS, lookup
from .policy import check
from .split import LIMIT, split_message, utf16_len
from .wire import Reply, decode

log = logging.getLogger(__name__)

CHUNK = 1 << 16
NOT_LEARNED = frozenset({"reply_to_message", "external_reply", "quote", "pinned_message"})
"""Parts of an answer that show a message the call did not send: a reply's original, a quote,
a pinned message. Their files stay unusable: a chat can hold what another user put there."""
PUBLIC_PROFILE = (
    "id",
    "is_bot",
    "first_name",
    "last_name",
    "username",
    "can_join_groups",
    "can_read_all_group_messages",
    "supports_inline_queries",
    "can_connect_to_business",
    "has_main_web_app",
)
"""What `getMe` answers: the bot's public profile, which any Telegram user can see anyway."""


def passthrough(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type="application/json")


async def call(request: web.Request) -> web.StreamResponse:
    """POST /v1/telegram/{method}."""
    user_id = await require_server(request)
    channel = telegram_of(request)
    method = lookup(request.match_info["method"])
    if method is None:
        raise NotFound("unknown_method", "allowed: " + ", ".join(m.name for m in METHODS))
    params, uploads = await read_call(request)
    checked = await check(channel.chats, user_id, method, params, uploads)
    if method.name == "getMe":
        return await _get_me(channel)
    chat = checked.chat or await _budget_chat(channel, user_id)
    text = checked.params.get("text")
    if method.name == "sendMessage" and isinstance(text, str) and utf16_len(text) > LIMIT and text.strip():
        return await _send_long(channel, user_id, checked.params, text, chat)
    reply = await channel.send(user_id, method.name, checked.params, uploads, chat)
    if method.name == "getFile":
        return _file_answer(reply)
    await _learn(channel, user_id, reply)
    return passthrough(reply)


async def _get_me(channel: Telegram) -> web.Response:
    """Answered from the gateway's own `getMe` (made once at start): it costs Telegram nothing."""
    profile = await channel.profile()
    return json_response({"ok": True, "result": {k: profile[k] for k in PUBLIC_PROFILE if k in profile}})


async def _budget_chat(channel: Telegram, user_id: str) -> ChatInfo | None:
    # A call that names no chat (a callback answer, getFile) is counted against the user's
    # private chat, so it too spends the user's budgets.
    private = await channel.chats.private_chat(user_id)
    return await channel.chats.chat_of(user_id, private) if private is not None else None


def _file_answer(reply: Reply) -> web.Response:
    """getFile's answer with a `file_path` that the gateway serves: `<file_id>/<file name>`.
    Telegram's own path is only usable with the bot token, and the gateway's download route
    checks the file id against the caller."""
    result = reply.result
    if not reply.ok or not isinstance(result, dict) or not isinstance(result.get("file_path"), str):
        return passthrough(reply)
    name = PurePosixPath(result["file_path"]).name or "file"
    data = {**reply.data, "result": {**result, "file_path": f"{result['file_id']}/{quote(name, safe='')}"}}
    return json_response(data, status=reply.status)


def own_file_ids(value: Any) -> Iterator[str]:
    """The file ids of what the call itself sent (see NOT_LEARNED)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "file_id" and isinstance(item, str):
                yield item
            elif key not in NOT_LEARNED:
                yield from own_file_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from own_file_ids(item)


async def _learn(channel: Telegram, user_id: str, reply: Reply) -> None:
    """File ids in what this user's server sent are this user's to use again."""
    if reply.ok:
        ids = list(own_file_ids(reply.result))
        if ids:
            await channel.chats.remember(user_id, "files", ids)


async def _send_long(
    channel: Telegram, user_id: str, params: dict[str, Any], text: str, chat: ChatInfo | None
) -> web.Response:
    """Several messages in order; the answer is the first as `result` and all of them as `messages`."""
    entities = params.get("entities")
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
        await _learn(channel, user_id, reply)
    return json_response({"ok": True, "result": messages[0] if messages else None, "messages": messages})


async def download(request: web.Request) -> web.StreamResponse:
    """GET /v1/telegram/files/{file_id}[/{name}]: the file's bytes, streamed; the token stays here.

    The second form is the `file_path` a getFile answer holds; the name only helps the client."""
    user_id = await require_server(request)
    channel = telegram_of(request)
    file_id = request.match_info["file_id"]
    if len(file_id) > 512 or not await channel.chats.knows(user_id, "files", file_id):
        raise NotFound("unknown_file", "no such file in this user's chats")
    reply = await channel.send(user_id, "getFile", {"file_id": file_id}, (), await _budget_chat(channel, user_id))
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
