"""The Bot API methods a dedicated server may call, and what each of their parameters may name.

This table is the whole policy of the server API (contract §9.4): a method not in it is
`404 unknown_method`, a parameter not listed for its method is `400 invalid_parameter`, and
every parameter is checked by its kind before anything reaches Telegram. `docs/telegram.md`
shows this table; a test keeps the two the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Kind(enum.Enum):
    """What a parameter holds, and so how it is checked."""

    VALUE = "value"
    """A string, number or boolean passed on as it is (`text`, `message_id`, `caption`…)."""
    CHAT = "chat"
    """The target chat: one of the caller's linked chats; omitted → their private chat."""
    SOURCE_CHAT = "source chat"
    """The chat a message is taken from: one of the caller's linked chats, required."""
    FILE = "file"
    """An upload, `attach://<part>`, an http(s) URL, or a file id that reached the caller."""
    FILE_ID = "file id"
    """A file id that reached the caller (nothing else)."""
    CALLBACK = "callback query"
    """A callback query id from an update of the caller's chats."""
    REPLY = "reply (JSON)"
    """ReplyParameters: an object whose `chat_id`, when given, is one of the caller's chats."""
    MEDIA = "media (JSON)"
    """One InputMedia object; its `media`, `thumbnail` and `cover` are file references."""
    MEDIA_LIST = "media list (JSON)"
    """An array of InputMedia objects, each checked as `media (JSON)`."""
    OBJECT = "object (JSON)"
    """Any other JSON object (reply_markup, link_preview_options): parsed, re-encoded."""
    ARRAY = "array (JSON)"
    """Any other JSON array (entities, reaction, poll options): parsed, re-encoded."""

    @property
    def is_json(self) -> bool:
        return self in _JSON


_JSON = frozenset({Kind.REPLY, Kind.MEDIA, Kind.MEDIA_LIST, Kind.OBJECT, Kind.ARRAY})
MEDIA_FILES = ("media", "thumbnail", "cover")
"""The fields of an InputMedia object that name a file."""
REPLY_CHATS = ("chat_id",)
"""The fields of ReplyParameters that name a chat."""

V, C, S, F, R, OBJ, ARR = Kind.VALUE, Kind.CHAT, Kind.SOURCE_CHAT, Kind.FILE, Kind.REPLY, Kind.OBJECT, Kind.ARRAY

# Parameters most sending methods share. business_connection_id is left out on purpose: it
# sends on behalf of a business account, which no user of the gateway can be tied to.
_SEND = {
    "chat_id": C,
    "message_thread_id": V,
    "direct_messages_topic_id": V,
    "disable_notification": V,
    "protect_content": V,
    "allow_paid_broadcast": V,
    "message_effect_id": V,
    "reply_parameters": R,
    "reply_to_message_id": V,
    "allow_sending_without_reply": V,
    "reply_markup": OBJ,
}
_CAPTION = {"caption": V, "parse_mode": V, "caption_entities": ARR, "show_caption_above_media": V}
_EDIT = {"chat_id": C, "message_id": V, "reply_markup": OBJ}
_POINT = {"latitude": V, "longitude": V}
_TEXT = {"text": V, "parse_mode": V, "entities": ARR, "link_preview_options": OBJ, "disable_web_page_preview": V}


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    params: Mapping[str, Kind]

    @property
    def has_chat(self) -> bool:
        return "chat_id" in self.params

    def of_kind(self, *kinds: Kind) -> tuple[str, ...]:
        return tuple(name for name, kind in self.params.items() if kind in kinds)


def _m(name: str, *parts: Mapping[str, Kind], **own: Kind) -> Method:
    params: dict[str, Kind] = {}
    for part in parts:
        params.update(part)
    params.update(own)
    return Method(name, params)


METHODS: tuple[Method, ...] = (
    _m("getMe"),
    _m("sendMessage", _SEND, _TEXT),
    _m("sendMessageDraft", chat_id=C, message_thread_id=V, draft_id=V, text=V, parse_mode=V, entities=ARR),
    _m("sendChatAction", chat_id=C, message_thread_id=V, action=V),
    _m(
        "editMessageText",
        _EDIT,
        text=V,
        parse_mode=V,
        entities=ARR,
        link_preview_options=OBJ,
        disable_web_page_preview=V,
    ),
    _m("editMessageCaption", _EDIT, _CAPTION),
    _m("editMessageMedia", _EDIT, media=Kind.MEDIA),
    _m("editMessageReplyMarkup", _EDIT),
    _m("deleteMessage", chat_id=C, message_id=V),
    _m("setMessageReaction", chat_id=C, message_id=V, reaction=ARR, is_big=V),
    _m("pinChatMessage", chat_id=C, message_id=V, disable_notification=V),
    _m("unpinChatMessage", chat_id=C, message_id=V),
    _m("sendPhoto", _SEND, _CAPTION, photo=F, has_spoiler=V),
    _m("sendDocument", _SEND, _CAPTION, document=F, thumbnail=F, disable_content_type_detection=V),
    _m("sendVoice", _SEND, _CAPTION, voice=F, duration=V),
    _m("sendAudio", _SEND, _CAPTION, audio=F, thumbnail=F, duration=V, performer=V, title=V),
    _m(
        "sendVideo",
        _SEND,
        _CAPTION,
        video=F,
        thumbnail=F,
        cover=F,
        start_timestamp=V,
        duration=V,
        width=V,
        height=V,
        supports_streaming=V,
        has_spoiler=V,
    ),
    _m("sendAnimation", _SEND, _CAPTION, animation=F, thumbnail=F, duration=V, width=V, height=V, has_spoiler=V),
    _m("sendVideoNote", _SEND, video_note=F, thumbnail=F, duration=V, length=V),
    _m("sendSticker", _SEND, sticker=F, emoji=V),
    _m(
        "sendMediaGroup",
        {k: v for k, v in _SEND.items() if k != "reply_markup"},
        media=Kind.MEDIA_LIST,
    ),
    _m(
        "sendLocation",
        _SEND,
        _POINT,
        horizontal_accuracy=V,
        live_period=V,
        heading=V,
        proximity_alert_radius=V,
    ),
    _m(
        "sendVenue",
        _SEND,
        _POINT,
        title=V,
        address=V,
        foursquare_id=V,
        foursquare_type=V,
        google_place_id=V,
        google_place_type=V,
    ),
    _m("sendContact", _SEND, phone_number=V, first_name=V, last_name=V, vcard=V),
    _m(
        "sendPoll",
        _SEND,
        question=V,
        question_parse_mode=V,
        question_entities=ARR,
        options=ARR,
        is_anonymous=V,
        type=V,
        allows_multiple_answers=V,
        correct_option_id=V,
        explanation=V,
        explanation_parse_mode=V,
        explanation_entities=ARR,
        open_period=V,
        close_date=V,
        is_closed=V,
    ),
    _m("stopPoll", _EDIT),
    _m(
        "copyMessage",
        _SEND,
        _CAPTION,
        from_chat_id=S,
        message_id=V,
        video_start_timestamp=V,
    ),
    _m(
        "forwardMessage",
        chat_id=C,
        from_chat_id=S,
        message_id=V,
        message_thread_id=V,
        direct_messages_topic_id=V,
        video_start_timestamp=V,
        disable_notification=V,
        protect_content=V,
    ),
    _m("answerCallbackQuery", callback_query_id=Kind.CALLBACK, text=V, show_alert=V, url=V, cache_time=V),
    _m("getFile", file_id=Kind.FILE_ID),
)
BY_NAME: dict[str, Method] = {m.name.lower(): m for m in METHODS}


def lookup(name: str) -> Method | None:
    """The method by its name, matched case-insensitively as Telegram does."""
    return BY_NAME.get(name.lower())


def table() -> str:
    """The table as Markdown, one row per method (docs/telegram.md holds exactly this)."""
    rows = [
        "| method | chat | message source | files | callback query | JSON parameters | other parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        cells = [
            method.of_kind(Kind.CHAT),
            (*method.of_kind(Kind.SOURCE_CHAT), *(f"{n}.chat_id" for n in method.of_kind(Kind.REPLY))),
            (
                *method.of_kind(Kind.FILE, Kind.FILE_ID),
                *(f"{n}.{f}" for n in method.of_kind(Kind.MEDIA) for f in MEDIA_FILES),
                *(f"{n}[].{f}" for n in method.of_kind(Kind.MEDIA_LIST) for f in MEDIA_FILES),
            ),
            method.of_kind(Kind.CALLBACK),
            tuple(n for n, k in method.params.items() if k.is_json),
            method.of_kind(Kind.VALUE),
        ]
        rows.append(f"| `{method.name}` | " + " | ".join(", ".join(f"`{c}`" for c in cell) for cell in cells) + " |")
    return "\n".join(rows) + "\n"
