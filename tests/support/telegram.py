"""A Bot API server for tests, speaking Telegram's wire format: `POST /bot<token>/<method>` with
form-encoded, JSON or multipart bodies (or GET with a query), answers `{"ok": true, "result": ...}`
or `{"ok": false, "error_code", "description"[, "parameters"]}`, files under
`/file/bot<token>/<file_path>`. Objects are shaped as the Bot API documentation shows them.
Failures (5xx, 429 with `parameters.retry_after`, 4xx) can be scripted per method."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer

BOT_ID = 7012345678
TOKEN = f"{BOT_ID}:AAF3kq9wZx-TestOnly_a1B2c3D4e5F6g7H8i9J0"
USERNAME = "ally_test_bot"
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "Ally", "username": USERNAME}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, str, bytes]]
    encoding: str
    at: float


@dataclass
class FakeTelegram:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    scripted: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    webhook: dict[str, Any] = field(default_factory=dict)
    server: TestServer | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    """Every message the bot sent or was shown, by (chat id, message id): what replies quote."""
    updates: list[dict[str, Any]] = field(default_factory=list)
    """Updates waiting for getUpdates, oldest first (only while no webhook is set)."""
    _poll: asyncio.Future[None] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def fail(self, method: str, status: int, description: str, *, retry_after: int | None = None, times: int = 1):
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.scripted.setdefault(method, []).extend([(status, body)] * times)

    def add_file(self, content: bytes, path: str = "documents/file_1.pdf") -> dict[str, Any]:
        file_id = "BQACAgIAAxkBAAI" + os.urandom(12).hex()
        self.files[file_id] = (path, content)
        return {"file_id": file_id, "file_unique_id": "AgAD" + os.urandom(4).hex(), "file_size": len(content)}

    def remember(self, update: dict[str, Any]) -> dict[str, Any]:
        """Keep a message from an update, as Telegram has it (so a reply to it can quote it)."""
        message: dict[str, Any] = update["message"]
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def sent(self, method: str = "sendMessage", chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, str, bytes]], str]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, tuple[str, str, bytes]] = {}
        if request.content_type == "application/json":
            params.update(orjson.loads(await request.read()))
            return params, files, "json"
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader) and part.name
                data = await part.read()
                if part.filename is None:
                    params[part.name] = data.decode()
                else:
                    files[part.name] = (part.filename, part.headers.get("Content-Type", ""), bytes(data))
            return params, files, "multipart"
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
            return params, files, "form"
        return params, files, "query"

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files, encoding = await self._read(request)
        self.calls.append(Call(method, params, files, encoding, time.monotonic()))
        self.changed.set()
        script = self.scripted.get(method)
        if script:
            status, body = script.pop(0)
            return web.json_response(body, status=status)
        if method.lower() == "getupdates":
            return await self._get_updates(params)
        handler = getattr(self, "_m_" + method.lower(), None)
        if handler is None:
            return _error(404, "Not Found")
        try:
            return web.json_response({"ok": True, "result": handler(params, files)})
        except _BadRequest as exc:
            return _error(400, f"Bad Request: {exc}")
        except (KeyError, ValueError, TypeError):
            # A missing or unreadable parameter: Telegram answers 400, never 500.
            return _error(400, "Bad Request: invalid or missing parameters")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        for path, content in self.files.values():
            if path == request.match_info["path"]:
                return web.Response(body=content, content_type="application/octet-stream")
        return _error(404, "Not Found")

    # -- methods, shaped as the Bot API answers them -------------------------------------

    def _m_getme(self, _p: dict[str, Any], _f: Any) -> Any:
        return {
            **BOT_USER,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _m_setwebhook(self, p: dict[str, Any], _f: Any) -> Any:
        self.webhook = dict(p) if p.get("url") else {}
        return True

    def _m_deletewebhook(self, p: dict[str, Any], _f: Any) -> Any:
        self.webhook = {}
        if str(p.get("drop_pending_updates", "")).lower() == "true":
            self.updates.clear()
        return True

    def _m_getwebhookinfo(self, _p: dict[str, Any], _f: Any) -> Any:
        pending = len(self.updates) if not self.webhook else 0
        return {"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": pending}

    # -- getUpdates, as the Bot API documents it ----------------------------------------

    def push(self, *updates: dict[str, Any]) -> None:
        """Updates arriving at Telegram for this bot, to be fetched with getUpdates."""
        self.updates.extend(updates)
        self.changed.set()

    async def _get_updates(self, p: dict[str, Any]) -> web.Response:
        if self.webhook:
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit, timeout = int(p.get("offset", 0)), int(p.get("limit", 100)), float(p.get("timeout", 0))
        if not 1 <= limit <= 100:
            limit = 100
        # An update is confirmed by a call with a higher offset; a negative offset keeps the last -offset.
        if offset < 0:
            del self.updates[:offset]
        elif offset:
            self.updates[:] = [u for u in self.updates if u["update_id"] >= offset]
        # A newer getUpdates call ends one still waiting, which gets 409 (two pollers of one bot).
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(None)
        poll = self._poll = asyncio.get_running_loop().create_future()
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.updates and not poll.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self.changed.clear()
            waiter = asyncio.ensure_future(self.changed.wait())
            await asyncio.wait([waiter, poll], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if poll.done():
            return _error(
                409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
            )
        poll.set_result(None)
        return web.json_response({"ok": True, "result": self.updates[:limit]})

    def _m_sendchataction(self, p: dict[str, Any], _f: Any) -> Any:
        _chat(p)
        return True

    def _m_deletemessage(self, p: dict[str, Any], _f: Any) -> Any:
        _chat(p)
        return True

    def _m_answercallbackquery(self, p: dict[str, Any], _f: Any) -> Any:
        if not p.get("callback_query_id"):
            raise _BadRequest("query is too old and response timeout expired or query ID is invalid")
        return True

    def _m_sendmessage(self, p: dict[str, Any], _f: Any) -> Any:
        text = str(p.get("text", ""))
        if not text.strip():
            raise _BadRequest("message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise _BadRequest("message is too long")
        entities = {"entities": json_param(p["entities"])} if p.get("entities") else {}
        return self._with(p, {"text": text, **entities})

    def _m_sendmessagedraft(self, p: dict[str, Any], _f: Any) -> Any:
        if _chat(p) <= 0:
            raise _BadRequest("TEXTDRAFT_PEER_INVALID")
        if not int(p["draft_id"]):
            raise _BadRequest("draft_id must be non-zero")
        return True

    def _m_editmessagetext(self, p: dict[str, Any], _f: Any) -> Any:
        return self._edit(p, text=p["text"])

    def _m_editmessagecaption(self, p: dict[str, Any], _f: Any) -> Any:
        return self._edit(p, caption=p.get("caption", ""))

    def _m_editmessagereplymarkup(self, p: dict[str, Any], _f: Any) -> Any:
        return self._edit(p)

    def _m_editmessagemedia(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        media = json_param(p["media"])
        return self._edit(p, **self._input_media(media, f))

    def _m_setmessagereaction(self, p: dict[str, Any], _f: Any) -> Any:
        _chat(p)
        for reaction in json_param(p.get("reaction", "[]")):
            if reaction.get("type") not in ("emoji", "custom_emoji", "paid"):
                raise _BadRequest("REACTION_INVALID")
        return True

    def _m_pinchatmessage(self, p: dict[str, Any], _f: Any) -> Any:
        self._stored(_chat(p), int(p["message_id"]))
        return True

    def _m_unpinchatmessage(self, p: dict[str, Any], _f: Any) -> Any:
        _chat(p)
        return True

    def _m_sendphoto(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        return self._with(p, self._photo(self._file_ref(p, f, "photo", "photos/file_{}.jpg")))

    def _m_senddocument(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "document", "documents/file_{}")
        name = f["document"][0] if "document" in f else "file"
        return self._with(p, {"document": {**ref, "file_name": name, "mime_type": "application/octet-stream"}})

    def _m_sendvoice(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "voice", "voice/file_{}.oga")
        return self._with(p, {"voice": {**ref, "duration": 2, "mime_type": "audio/ogg"}})

    def _m_sendaudio(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "audio", "music/file_{}.mp3")
        return self._with(p, {"audio": {**ref, "duration": 3, "mime_type": "audio/mpeg"}})

    def _m_sendvideo(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "video", "videos/file_{}.mp4")
        return self._with(p, {"video": {**ref, "width": 320, "height": 240, "duration": 3}})

    def _m_sendanimation(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "animation", "animations/file_{}.mp4")
        animation = {**ref, "width": 320, "height": 240, "duration": 1}
        return self._with(p, {"animation": animation, "document": animation})

    def _m_sendvideonote(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "video_note", "video_notes/file_{}.mp4")
        return self._with(p, {"video_note": {**ref, "length": 240, "duration": 3}})

    def _m_sendsticker(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        ref = self._file_ref(p, f, "sticker", "stickers/file_{}.webp")
        sticker = {**ref, "type": "regular", "width": 512, "height": 512, "is_animated": False, "is_video": False}
        return self._with(p, {"sticker": sticker})

    def _m_sendmediagroup(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> Any:
        items = json_param(p["media"])
        if not 2 <= len(items) <= 10:
            raise _BadRequest("wrong number of media specified")
        group = str(next(self._ids) * 1_000_003)
        return [self._with(p, {**self._input_media(i, f), "media_group_id": group}) for i in items]

    def _m_sendlocation(self, p: dict[str, Any], _f: Any) -> Any:
        return self._with(p, {"location": _point(p)})

    def _m_sendvenue(self, p: dict[str, Any], _f: Any) -> Any:
        venue = {"location": _point(p), "title": p["title"], "address": p["address"]}
        return self._with(p, {"venue": venue, "location": venue["location"]})

    def _m_sendcontact(self, p: dict[str, Any], _f: Any) -> Any:
        contact = {"phone_number": p["phone_number"], "first_name": p["first_name"]}
        return self._with(p, {"contact": contact})

    def _m_sendpoll(self, p: dict[str, Any], _f: Any) -> Any:
        options = json_param(p["options"])
        if not 2 <= len(options) <= 12:
            raise _BadRequest("poll must have at least 2 option")
        return self._with(p, {"poll": _poll(str(p["question"]), options, closed=False)})

    def _m_stoppoll(self, p: dict[str, Any], _f: Any) -> Any:
        poll = self._stored(_chat(p), int(p["message_id"])).get("poll")
        if poll is None:
            raise _BadRequest("message with poll to stop not found")
        return {**poll, "is_closed": True}

    def _m_copymessage(self, p: dict[str, Any], _f: Any) -> Any:
        source = self._stored(int(p["from_chat_id"]), int(p["message_id"]))
        copy = {k: v for k, v in source.items() if k not in ("message_id", "from", "chat", "date", "forward_origin")}
        return {"message_id": self._with(p, copy)["message_id"]}

    def _m_forwardmessage(self, p: dict[str, Any], _f: Any) -> Any:
        source = self._stored(int(p["from_chat_id"]), int(p["message_id"]))
        content = {k: v for k, v in source.items() if k not in ("message_id", "from", "chat", "date")}
        origin = {"type": "user", "date": source["date"], "sender_user": source.get("from", BOT_USER)}
        return self._with(p, {**content, "forward_origin": origin})

    def _m_getfile(self, p: dict[str, Any], _f: Any) -> Any:
        file_id = str(p.get("file_id", ""))
        if file_id not in self.files:
            raise _BadRequest("invalid file_id")
        path, content = self.files[file_id]
        return {"file_id": file_id, "file_unique_id": "AgADfile", "file_size": len(content), "file_path": path}

    def _message(self, p: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat(p)
        message_id = next(self._ids)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": BOT_USER,
            "chat": _chat_object(chat_id),
            "date": int(time.time()),
        }
        message.update(self._reply(chat_id, p))
        if p.get("reply_markup"):
            message["reply_markup"] = json_param(p["reply_markup"])
        self.messages[(chat_id, message_id)] = message
        return message

    def _reply(self, chat_id: int, p: dict[str, Any]) -> dict[str, Any]:
        """What Telegram puts into a message that replies: the original in the same chat, or,
        for a message of another chat, `external_reply` with its content (files included)."""
        if not p.get("reply_parameters"):
            return {}
        params = json_param(p["reply_parameters"])
        source_chat = int(params.get("chat_id", chat_id))
        original = self._stored(source_chat, int(params["message_id"]))
        if source_chat == chat_id:
            return {"reply_to_message": original}
        content = {k: v for k, v in original.items() if k not in ("message_id", "from", "chat", "date", "text")}
        origin = {"type": "user", "date": original["date"], "sender_user": original.get("from", BOT_USER)}
        return {"external_reply": {"origin": origin, "chat": original["chat"], **content}}

    def _stored(self, chat_id: int, message_id: int) -> dict[str, Any]:
        message = self.messages.get((chat_id, message_id))
        if message is None:
            raise _BadRequest("message to reply not found" if message_id else "message not found")
        return message

    def _edit(self, p: dict[str, Any], **changes: Any) -> dict[str, Any]:
        chat_id, message_id = _chat(p), int(p["message_id"])
        # A message the stand-in never saw (one a user sent, say) is edited as Telegram would find it.
        blank = {"message_id": message_id, "from": BOT_USER, "chat": _chat_object(chat_id), "date": int(time.time())}
        message = self.messages.setdefault((chat_id, message_id), blank)
        message.update(changes, edit_date=int(time.time()))
        if p.get("reply_markup"):
            message["reply_markup"] = json_param(p["reply_markup"])
        return message

    def _with(self, p: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
        """A new message in the call's chat holding `content` (kept, so later calls find it)."""
        message = self._message(p)
        message.update(content)
        if p.get("caption"):
            message["caption"] = p["caption"]
        return message

    def _photo(self, ref: dict[str, Any]) -> dict[str, Any]:
        return {"photo": [{**ref, "width": 90, "height": 67}, {**ref, "width": 320, "height": 240}]}

    def _input_media(self, media: dict[str, Any], f: dict[str, tuple[str, str, bytes]]) -> dict[str, Any]:
        """An InputMedia object as the message content it becomes."""
        kind = media.get("type")
        ref = self._file_ref({"media": media.get("media")}, f, "media", f"{kind}s/file_{{}}")
        shaped = {"photo": self._photo(ref), "document": {"document": {**ref, "file_name": "file"}}}
        content = shaped.get(str(kind), {str(kind): {**ref, "width": 320, "height": 240, "duration": 1}})
        return {**content, **({"caption": media["caption"]} if media.get("caption") else {})}

    def _file_ref(self, p: dict[str, Any], f: dict[str, tuple[str, str, bytes]], name: str, path: str) -> Any:
        if name in f or str(p.get(name, "")).startswith("attach://"):
            key = name if name in f else str(p[name]).removeprefix("attach://")
            ref = self.add_file(f[key][2], path.format(len(self.files) + 1))
            return ref
        value = str(p.get(name, ""))
        if value in self.files:
            return {"file_id": value, "file_unique_id": "AgADsame", "file_size": len(self.files[value][1])}
        if value.startswith("https://"):
            return self.add_file(b"fetched", path.format(len(self.files) + 1))
        raise _BadRequest("wrong file identifier/HTTP URL specified")


class _BadRequest(Exception):
    pass


def _error(status: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)


def _chat(p: dict[str, Any]) -> int:
    try:
        return int(p["chat_id"])
    except (KeyError, ValueError):
        raise _BadRequest("chat not found") from None


def _chat_object(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Test"}
    return {"id": chat_id, "type": "supergroup", "title": "Test group"}


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def json_param(value: Any) -> Any:
    """A JSON-serialized parameter, read as Telegram's reader does: surrounding whitespace is
    fine, and of a repeated key the first one counts."""
    return json.loads(value, object_pairs_hook=_first_wins) if isinstance(value, str) else value


def _point(p: dict[str, Any]) -> dict[str, float]:
    return {"latitude": float(p["latitude"]), "longitude": float(p["longitude"])}


def _poll(question: str, options: list[Any], *, closed: bool) -> dict[str, Any]:
    texts = [o["text"] if isinstance(o, dict) else str(o) for o in options]
    return {
        "id": str(5_000_000_000 + len(question)),
        "question": question,
        "options": [{"text": t, "voter_count": 0} for t in texts],
        "total_voter_count": 0,
        "is_closed": closed,
        "is_anonymous": True,
        "type": "regular",
        "allows_multiple_answers": False,
    }


# -- updates, shaped as the Bot API documentation shows them ----------------------------------

_update_ids = itertools.count(int(time.time()) % 100_000 * 1000)
_message_ids = itertools.count(100)


def person(user_id: int, first_name: str = "Alice", username: str | None = "alice") -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
    if username:
        user["username"] = username
    return user


def private_chat(user: dict[str, Any]) -> dict[str, Any]:
    chat = {"id": user["id"], "first_name": user["first_name"], "type": "private"}
    if "username" in user:
        chat["username"] = user["username"]
    return chat


def group_chat(chat_id: int, title: str = "Family") -> dict[str, Any]:
    return {"id": chat_id, "title": title, "type": "group", "all_members_are_administrators": True}


def next_update_id() -> int:
    return next(_update_ids)


def message(chat: dict[str, Any], sender: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"message_id": next(_message_ids), "from": sender, "chat": chat, "date": int(time.time()), **fields}
    return {"update_id": next_update_id(), "message": body}


def text(chat: dict[str, Any], sender: dict[str, Any], content: str) -> dict[str, Any]:
    return message(chat, sender, text=content)


def start(chat: dict[str, Any], sender: dict[str, Any], code: str) -> dict[str, Any]:
    return message(chat, sender, text=f"/start {code}", entities=[{"offset": 0, "length": 6, "type": "bot_command"}])


def chat_member(chat: dict[str, Any], sender: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    body = {
        "chat": chat,
        "from": sender,
        "date": int(time.time()),
        "old_chat_member": {"user": BOT_USER, "status": old},
        "new_chat_member": {"user": BOT_USER, "status": new, **({"until_date": 0} if new == "kicked" else {})},
    }
    return {"update_id": next_update_id(), "my_chat_member": body}
