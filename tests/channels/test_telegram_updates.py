"""The webhook's Update reader against python-telegram-bot as the oracle.

`channels/telegram/updates.py` reads the dict itself; `tests/support/ptb_updates.py` is how
the gateway read it before, with `telegram.Update.de_json`. For updates of every kind, with
and without their optional parts, and for each of them mutated field by field into hostile
shapes (booleans and strings for ids, huge ints, floats, wrong nesting, missing fields):

- where both accept, routing sees the same thing (chat, person, link code, button, bot added
  or removed, supergroup moves, whether someone wrote, the chat and person of link events);
- where only the new reader refuses, the mutated field is one routing reads (stricter);
- where only the library refused, routing sees exactly what it saw in the update before the
  mutation: the field was one routing never reads, and is forwarded as sent;
- a field routing reads, of the wrong JSON type, is always refused.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import telegram
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.telegram import notices, updates
from foundation.errors import BadRequest
from tests.support import ptb_updates as ptb
from tests.support import telegram as tgs

BOT = tgs.BOT_ID
ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", None)
PRIVATE = tgs.private_chat(ALICE)
GROUP = tgs.group_chat(-4000111)
SUPERGROUP = {"id": -1001234567890, "title": "Team", "type": "supergroup", "is_forum": True}
CHANNEL = {"id": -1009876543210, "title": "News", "type": "channel", "username": "news"}
NOW = 1795773600
PHOTO = [
    {"file_id": "AgACAgIAAxkBAAIBb2Z", "file_unique_id": "AQADq7", "file_size": 1432, "width": 90, "height": 67},
    {"file_id": "AgACAgIAAxkBAAIBb2Y", "file_unique_id": "AQADq8", "file_size": 20311, "width": 320, "height": 240},
]
COMMAND = [{"offset": 0, "length": 6, "type": "bot_command"}]
VOTE = {"option_ids": [0], "option_persistent_ids": ["a"]}
ADMIN_RIGHTS = dict.fromkeys(
    (
        "can_be_edited",
        "is_anonymous",
        "can_manage_chat",
        "can_delete_messages",
        "can_manage_video_chats",
        "can_restrict_members",
        "can_promote_members",
        "can_change_info",
        "can_invite_users",
        "can_post_stories",
        "can_edit_stories",
        "can_delete_stories",
    ),
    False,
)
RESTRICTIONS = {
    **dict.fromkeys(
        (
            "is_member",
            "can_change_info",
            "can_invite_users",
            "can_pin_messages",
            "can_send_messages",
            "can_send_polls",
            "can_send_other_messages",
            "can_add_web_page_previews",
            "can_manage_topics",
            "can_send_audios",
            "can_send_documents",
            "can_send_photos",
            "can_send_videos",
            "can_send_video_notes",
            "can_send_voice_notes",
            "can_edit_tag",
            "can_react_to_messages",
        ),
        True,
    ),
    "until_date": 0,
}


def msg(chat: dict[str, Any], sender: dict[str, Any] | None = ALICE, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"message_id": 4711, "chat": chat, "date": NOW, **fields}
    if sender is not None:
        body["from"] = sender
    return body


def member(status: str, user: dict[str, Any] = tgs.BOT_USER) -> dict[str, Any]:
    rights: dict[str, dict[str, Any]] = {
        "administrator": ADMIN_RIGHTS,
        "restricted": RESTRICTIONS,
        "kicked": {"until_date": 0},
        "creator": {"is_anonymous": False},
    }
    extra = rights.get(status, {})
    return {"user": user, "status": status, **extra}


def member_update(chat: dict[str, Any], old: str, new: str, sender: dict[str, Any] = ALICE) -> dict[str, Any]:
    return {"chat": chat, "from": sender, "date": NOW, "old_chat_member": member(old), "new_chat_member": member(new)}


def kinds() -> dict[str, dict[str, Any]]:
    """One update body per name: every kind the routing chains know, with and without optional parts."""
    button = {"id": "4382bfdwdsb323b2d9", "from": ALICE, "chat_instance": "-2938479238472"}
    boost_source = {"source": "premium", "user": ALICE}
    poll = {
        "id": "5",
        "question": "Lunch?",
        "options": [
            {"persistent_id": "a", "text": "yes", "voter_count": 1},
            {"persistent_id": "b", "text": "no", "voter_count": 0},
        ],
        "total_voter_count": 1,
        "is_closed": False,
        "is_anonymous": False,
        "type": "regular",
        "allows_multiple_answers": False,
        "allows_revoting": False,
        "members_only": False,
    }
    return {
        "text": {"message": msg(PRIVATE, text="Can you move my 3 pm call?")},
        "start": {
            "message": msg(
                PRIVATE, text="/start AbC_-123", entities=[{"offset": 0, "length": 6, "type": "bot_command"}]
            )
        },
        "start at bot": {"message": msg(PRIVATE, text=f"/start@{tgs.USERNAME} code42")},
        "start without code": {"message": msg(PRIVATE, text="/start")},
        "start in group": {"message": msg(GROUP, text="/start code42")},
        "empty text": {"message": msg(PRIVATE, text="")},
        "photo": {"message": msg(PRIVATE, photo=PHOTO, caption="look")},
        "anonymous admin": {"message": msg(SUPERGROUP, None, sender_chat=SUPERGROUP, text="hi all")},
        "bot added": {"message": msg(GROUP, new_chat_members=[tgs.BOT_USER])},
        "others added": {"message": msg(GROUP, new_chat_members=[BOB, ALICE])},
        "bot added to a private chat": {"message": msg(PRIVATE, new_chat_members=[tgs.BOT_USER])},
        "bot left": {"message": msg(GROUP, left_chat_member=tgs.BOT_USER)},
        "someone left": {"message": msg(GROUP, left_chat_member=BOB)},
        "group created": {"message": msg(GROUP, group_chat_created=True)},
        "supergroup created": {"message": msg(SUPERGROUP, supergroup_chat_created=True)},
        "channel created": {"message": msg(CHANNEL, None, sender_chat=CHANNEL, channel_chat_created=True)},
        "created without sender": {"message": msg(GROUP, None, group_chat_created=True)},
        "migrated to": {"message": msg(GROUP, migrate_to_chat_id=SUPERGROUP["id"])},
        "migrated from": {"message": msg(SUPERGROUP, migrate_from_chat_id=GROUP["id"])},
        "edited": {"edited_message": msg(PRIVATE, text="edited", edit_date=NOW + 5)},
        "edited without sender": {"edited_message": msg(SUPERGROUP, None, sender_chat=SUPERGROUP, text="x")},
        "edited join": {"edited_message": msg(GROUP, new_chat_members=[BOB])},
        "channel post": {"channel_post": msg(CHANNEL, None, sender_chat=CHANNEL, text="news")},
        "channel post signed": {"channel_post": msg(CHANNEL, BOB, text="news", author_signature="Bob")},
        "edited channel post": {"edited_channel_post": msg(CHANNEL, None, sender_chat=CHANNEL, text="x")},
        "business message": {"business_message": msg(PRIVATE, text="hi", business_connection_id="bc1")},
        "edited business message": {"edited_business_message": msg(PRIVATE, BOB, business_connection_id="bc1")},
        "deleted business messages": {
            "deleted_business_messages": {"business_connection_id": "bc1", "chat": PRIVATE, "message_ids": [1, 2]}
        },
        "guest message": {"guest_message": msg(GROUP, text="a guest")},
        "button": {"callback_query": {**button, "data": "yes", "message": msg(PRIVATE, tgs.BOT_USER, text="Go?")}},
        "move button": {"callback_query": {**button, "data": "ally:move:abc", "message": msg(GROUP, tgs.BOT_USER)}},
        "button of an inaccessible message": {
            "callback_query": {**button, "data": "x", "message": {"message_id": 9, "chat": GROUP, "date": 0}}
        },
        "inline button": {"callback_query": {**button, "inline_message_id": "AAAB", "data": "ally:move:x"}},
        "game button": {"callback_query": {**button, "game_short_name": "snake", "message": msg(PRIVATE)}},
        "bot added as member": {"my_chat_member": member_update(GROUP, "left", "member")},
        "bot added as admin": {"my_chat_member": member_update(SUPERGROUP, "left", "administrator")},
        "bot added to a channel": {"my_chat_member": member_update(CHANNEL, "kicked", "administrator")},
        "bot restricted": {"my_chat_member": member_update(GROUP, "member", "restricted")},
        "bot kicked": {"my_chat_member": member_update(GROUP, "administrator", "kicked")},
        "bot blocked": {"my_chat_member": member_update(PRIVATE, "member", "kicked")},
        "bot unblocked": {"my_chat_member": member_update(PRIVATE, "kicked", "member")},
        "bot left a group": {"my_chat_member": member_update(GROUP, "member", "left", BOB)},
        "bot promoted": {"my_chat_member": member_update(GROUP, "member", "administrator")},
        "member joined": {"chat_member": member_update(GROUP, "left", "member", BOB)},
        "join request": {
            "chat_join_request": {"chat": SUPERGROUP, "from": BOB, "user_chat_id": BOB["id"], "date": NOW}
        },
        "boost": {
            "chat_boost": {
                "chat": CHANNEL,
                "boost": {"boost_id": "b1", "add_date": NOW, "expiration_date": NOW + 99, "source": boost_source},
            }
        },
        "boost removed": {
            "removed_chat_boost": {"chat": CHANNEL, "boost_id": "b1", "remove_date": NOW, "source": boost_source}
        },
        "reaction": {
            "message_reaction": {
                "chat": GROUP,
                "message_id": 8,
                "user": ALICE,
                "date": NOW,
                "old_reaction": [],
                "new_reaction": [{"type": "emoji", "emoji": "👍"}],
            }
        },
        "anonymous reaction": {
            "message_reaction": {
                "chat": SUPERGROUP,
                "message_id": 8,
                "actor_chat": SUPERGROUP,
                "date": NOW,
                "old_reaction": [{"type": "emoji", "emoji": "👍"}],
                "new_reaction": [],
            }
        },
        "reaction count": {
            "message_reaction_count": {
                "chat": CHANNEL,
                "message_id": 8,
                "date": NOW,
                "reactions": [{"type": {"type": "emoji", "emoji": "🔥"}, "total_count": 3}],
            }
        },
        "inline query": {"inline_query": {"id": "iq1", "from": ALICE, "query": "cats", "offset": ""}},
        "chosen inline result": {"chosen_inline_result": {"result_id": "r1", "from": ALICE, "query": "cats"}},
        "shipping query": {
            "shipping_query": {
                "id": "sq1",
                "from": ALICE,
                "invoice_payload": "p",
                "shipping_address": {
                    "country_code": "DE",
                    "state": "",
                    "city": "Berlin",
                    "street_line1": "A 1",
                    "street_line2": "",
                    "post_code": "10115",
                },
            }
        },
        "pre-checkout query": {
            "pre_checkout_query": {
                "id": "pq1",
                "from": ALICE,
                "currency": "EUR",
                "total_amount": 500,
                "invoice_payload": "p",
            }
        },
        "poll": {"poll": poll},
        "poll answer": {
            "poll_answer": {"poll_id": "5", "user": ALICE, "option_ids": [0], "option_persistent_ids": ["a"]}
        },
        "anonymous poll answer": {
            "poll_answer": {"poll_id": "5", "voter_chat": GROUP, "option_ids": [1], "option_persistent_ids": ["b"]}
        },
        "paid media purchased": {"purchased_paid_media": {"from": ALICE, "paid_media_payload": "pm"}},
        "business connection": {
            "business_connection": {
                "id": "bc1",
                "user": ALICE,
                "user_chat_id": ALICE["id"],
                "date": NOW,
                "is_enabled": True,
            }
        },
        "managed bot": {"managed_bot": {"user": ALICE, "bot": {**tgs.BOT_USER, "id": BOT + 1}}},
        "a kind from the future": {"future_kind": {"chat": PRIVATE, "from": ALICE}},
        "nothing": {},
        "message and edited message": {
            "message": msg(PRIVATE, text="/start code42"),
            "edited_message": msg(GROUP, BOB, new_chat_members=[BOB]),
        },
        "channel post and business message": {
            "channel_post": msg(CHANNEL, None, sender_chat=CHANNEL),
            "business_message": msg(PRIVATE, BOB, business_connection_id="bc1"),
        },
        "inline button and inline query": {
            "callback_query": {**button, "inline_message_id": "AAAB"},
            "inline_query": {"id": "iq1", "from": BOB, "query": "", "offset": ""},
        },
        "button and member change": {
            "callback_query": {**button, "data": "d"},
            "my_chat_member": member_update(GROUP, "left", "member", BOB),
        },
        "member change and message": {
            "my_chat_member": member_update(GROUP, "member", "kicked"),
            "message": msg(SUPERGROUP, BOB, left_chat_member=tgs.BOT_USER, migrate_from_chat_id=GROUP["id"]),
        },
        "reaction and reaction count": {
            "message_reaction_count": {"chat": CHANNEL, "message_id": 1, "date": NOW, "reactions": []},
            "poll_answer": {"poll_id": "5", "user": BOB, "option_ids": [], "option_persistent_ids": []},
        },
    }


def bases() -> list[tuple[str, dict[str, Any]]]:
    # Through JSON, as the webhook gets them: no object shared between two places of one update.
    return [(name, orjson.loads(orjson.dumps({"update_id": 912345678, **body}))) for name, body in kinds().items()]


# ------------------------------------------------------------------------------- what routing sees

Seen = tuple[Any, ...]
REFUSED = "refused"


def _plain(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The library leaves out empty values when it writes an object back; compare without them."""
    return None if value is None else {k: v for k, v in value.items() if v is not None and v != []}


def seen_now(data: dict[str, Any]) -> Seen | str:
    try:
        update = updates.parse_update(data)
    except BadRequest as exc:
        return REFUSED if exc.code == "invalid_update" else exc.code
    chat = updates.chat_of(update)
    query, message = update.callback_query, update.message
    return (
        update.update_id,
        chat,
        updates.start_code(message),
        None if query is None else (query.id, query.data, query.from_user.id),
        tuple(updates.added_by(update, bot) for bot in (BOT, BOB["id"])),
        tuple(updates.removed(update, bot) for bot in (BOT, BOB["id"])),
        notices.writes(update),
        message is not None,
        None if message is None else (message.migrate_to_chat_id, message.migrate_from_chat_id),
        None if update.effective_user is None else update.effective_user.id,
        _plain(update.effective_chat.as_json() if update.effective_chat is not None else None),
        _plain(update.effective_user.as_json() if update.effective_user is not None else None),
    )


def seen_before(data: dict[str, Any]) -> Seen | str:
    """The same through the library. An update it accepts but that then fails one of these questions
    (say, a button press without a sender) counts as refused: routing could not have served it."""
    try:
        update = ptb.parse_update(copy.deepcopy(data))
        chat = ptb.chat_of(update)
        query, message = update.callback_query, update.message
        return (
            update.update_id,
            chat,
            ptb.start_code(message),
            None if query is None else (query.id, query.data, query.from_user.id),
            tuple(ptb.added_by(update, bot) for bot in (BOT, BOB["id"])),
            tuple(ptb.removed(update, bot) for bot in (BOT, BOB["id"])),
            ptb.writes(update),
            message is not None,
            None if message is None else (message.migrate_to_chat_id, message.migrate_from_chat_id),
            None if update.effective_user is None else update.effective_user.id,
            _plain(update.effective_chat.to_dict() if update.effective_chat is not None else None),
            _plain(update.effective_user.to_dict() if update.effective_user is not None else None),
        )
    except Exception:
        return REFUSED


# ------------------------------------------------------------------------- what routing reads (spec)

MESSAGE_KINDS = {
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
    "guest_message",
}
CHAT_KINDS = {"deleted_business_messages", "chat_boost", "removed_chat_boost", "message_reaction_count"}
PERSON_KINDS = {
    "inline_query": "from",
    "chosen_inline_result": "from",
    "shipping_query": "from",
    "pre_checkout_query": "from",
    "purchased_paid_media": "from",
    "poll_answer": "user",
    "business_connection": "user",
    "managed_bot": "user",
}
USER_FIELDS = {"id", "is_bot", "first_name"}
CHAT_FIELDS = {"id", "type"}
MESSAGE_FIELDS = {
    "message_id",
    "date",
    "text",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
}
KINDS = (
    MESSAGE_KINDS
    | CHAT_KINDS
    | set(PERSON_KINDS)
    | {
        "callback_query",
        "my_chat_member",
        "chat_member",
        "chat_join_request",
        "message_reaction",
        "poll",
    }
)

Path = tuple[str | int, ...]


def _user(rest: Path) -> bool:
    return not rest or (len(rest) == 1 and rest[0] in USER_FIELDS)


def _chat(rest: Path) -> bool:
    return not rest or (len(rest) == 1 and rest[0] in CHAT_FIELDS)


def _message(rest: Path) -> bool:
    if not rest:
        return True
    head, tail = rest[0], rest[1:]
    if head in ("from", "left_chat_member"):
        return _user(tail)
    if head == "new_chat_members":
        return not tail or _user(tail[1:])
    if head == "chat":
        return _chat(tail)
    return head in MESSAGE_FIELDS and not tail


def reads(path: Path) -> bool:
    """Whether routing reads the field at `path` (list positions are ints): the spec, written apart."""
    kind, rest = path[0], path[1:]
    if kind == "update_id":
        return True
    if kind not in KINDS or not rest:
        return kind in KINDS
    head, tail = rest[0], rest[1:]
    if kind in MESSAGE_KINDS:
        return _message(rest)
    if kind == "callback_query":
        return (
            (head in ("id", "data") and not tail)
            or (head == "from" and _user(tail))
            or (head == "message" and _message(tail))
        )
    if kind in ("my_chat_member", "chat_member"):
        if head in ("old_chat_member", "new_chat_member"):
            return not tail or tail[0] == "status" or (tail[0] == "user" and _user(tail[1:]))
        return (head == "chat" and _chat(tail)) or (head == "from" and _user(tail))
    if head == "chat" and (kind in CHAT_KINDS or kind in ("chat_join_request", "message_reaction")):
        return _chat(tail)
    person = {"chat_join_request": "from", "message_reaction": "user", **PERSON_KINDS}.get(kind)
    return head == person and _user(tail)


# ---------------------------------------------------------------------------------------- mutations

HOSTILE: list[Any] = [None, True, False, 0, -5, "7", "", 1.5, 1 << 63, -(1 << 63) - 1, [], [1], {}, {"id": 1}]
GONE = object()


def paths(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key), item
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index), item
            yield from paths(item, (*prefix, index))


def mutated(data: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    parent: Any = out
    for step in path[:-1]:
        parent = parent[step]
    if value is GONE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(1 << 63) <= value < 1 << 63 else "huge"
    return type(value).__name__


def mutations() -> Iterator[tuple[str, Path, Any, dict[str, Any], dict[str, Any]]]:
    for name, base in bases():
        for path, _original in paths(base):
            for value in [GONE, *HOSTILE]:
                yield name, path, value, base, mutated(base, path, value)


def restore(base: Any, data: Any, path: Path = ()) -> Any:
    """`data` with every field routing does not read put back as it is in `base`; a chat or person
    routing reads is kept whole, as link events carry it."""
    if isinstance(base, dict) and isinstance(data, dict):
        out = {}
        for key in [*data, *(k for k in base if k not in data)]:
            inner = (*path, key)
            if not reads(inner):
                if key in base:
                    out[key] = base[key]
            elif key in data:
                whole = key not in base or key in ("chat", "from", "user", "left_chat_member")
                out[key] = data[key] if whole else restore(base[key], data[key], inner)
        return out
    if isinstance(base, list) and isinstance(data, list):
        return [restore(base[i], item, (*path, i)) if i < len(base) else item for i, item in enumerate(data)]
    return data


@dataclass
class Tally:
    agreed: int = 0
    both_refused: int = 0
    stricter: int = 0
    lenient: int = 0


def check(base: dict[str, Any], data: dict[str, Any], changed: list[Path], tally: Tally) -> None:
    before, now = seen_before(data), seen_now(data)
    where = (changed, data)
    if before != REFUSED and now != REFUSED:
        assert now == before, where
        tally.agreed += 1
    elif before == REFUSED and now == REFUSED:
        tally.both_refused += 1
    elif now == REFUSED:
        assert any(reads(p) for p in changed), ("refused, yet routing reads none of", where)
        tally.stricter += 1
    else:
        # The library refused for a field routing does not read: with those fields as they were,
        # it accepts, and sees what the new reader sees.
        assert seen_before(restore(base, data)) == now, ("accepted what the library refused", where)
        tally.lenient += 1


# -------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("name", "data"), bases(), ids=[name for name, _ in bases()])
def test_every_kind_is_seen_as_the_library_sees_it(name: str, data: dict[str, Any]) -> None:
    before = seen_before(data)
    assert before != REFUSED, f"the corpus must be valid for the library: {name}"
    assert seen_now(data) == before


def test_any_two_updates_in_one_are_seen_as_the_library_sees_them() -> None:
    # Telegram sends one kind per update; which part decides when there are two is the order of
    # `effective_chat` and `effective_user`, checked here for every pair of the corpus, the second
    # with other ids so that it shows when the wrong part decides.
    checked = 0
    for _, first in bases():
        for _, second in bases():
            data = {**shifted(second), **first}
            before = seen_before(data)
            assert seen_now(data) == before, data
            checked += before != REFUSED
    assert checked > 4000


def shifted(value: Any) -> Any:
    """`value` with every chat and person id moved by 1000."""
    if isinstance(value, dict):
        return {k: v + 1000 if k == "id" and isinstance(v, int) else shifted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shifted(item) for item in value]
    return value


def test_the_corpus_covers_every_kind_the_routing_chains_know() -> None:
    present = {kind for _, base in bases() for kind in base}
    assert present >= KINDS
    assert set(updates._READERS) == KINDS == set(telegram.Update.ALL_TYPES)


def test_field_by_field_hostile_updates_agree_with_the_library_or_are_refused_for_a_field_routing_reads() -> None:
    tally = Tally()
    for _name, path, _value, base, data in mutations():
        check(base, data, [path], tally)
    # Each outcome happens, so none of the branches above is vacuous.
    assert min(tally.agreed, tally.both_refused, tally.stricter, tally.lenient) > 0, tally


def test_a_field_routing_reads_of_the_wrong_json_type_is_always_refused() -> None:
    checked = 0
    for _name, path, value, base, data in mutations():
        if value is GONE or value is None or not reads(path):
            continue
        original: Any = base
        for step in path:
            original = original[step]
        if json_type(value) != json_type(original):
            assert seen_now(data) == REFUSED, (path, value)
            checked += 1
    assert checked > 1000


REFUSED_BEFORE_AND_NOW: list[dict[str, Any]] = [
    {"update_id": True},
    {"update_id": "5"},
    {"update_id": -1},
    {"update_id": 1.0},
    {},
    {"update_id": 5, "message": "text"},
    {"update_id": 5, "message": []},
    {"update_id": 5, "poll": "text"},
    {"update_id": 5, "message": {}},
    {"update_id": 5, "message": {"message_id": 1, "date": NOW, "chat": {"id": True, "type": "private"}}},
    {"update_id": 5, "message": {"message_id": 1, "date": NOW, "chat": {"id": 1.0, "type": "private"}}},
    {"update_id": 5, "my_chat_member": {**member_update(GROUP, "left", "member"), "from": {"id": 1}}},
    {"update_id": 5, "message": msg(GROUP, new_chat_members={"id": BOT})},
]
REFUSED_NOW_ONLY: list[dict[str, Any]] = [
    # Ids beyond 64 bits, which Telegram never sends.
    {"update_id": 1 << 63},
    {"update_id": 5, "message": {"message_id": 1, "date": NOW, "chat": {"id": 1 << 64, "type": "private"}}},
    # A button press without a sender: before, a press of a move button then failed with a 500.
    {
        "update_id": 5,
        "callback_query": {"id": "1", "from": None, "chat_instance": "1", "data": "ally:move:x", "message": msg(GROUP)},
    },
    # Flags routing reads are booleans, not whatever is true in Python.
    {"update_id": 5, "message": msg(GROUP, group_chat_created="yes")},
]


@pytest.mark.parametrize(
    ("data", "before"),
    [(d, REFUSED) for d in REFUSED_BEFORE_AND_NOW] + [(d, "accepted") for d in REFUSED_NOW_ONLY],
)
def test_hostile_shapes_are_invalid_updates(data: dict[str, Any], before: str) -> None:
    with pytest.raises(BadRequest) as refused:
        updates.parse_update(data)
    assert refused.value.code == "invalid_update"
    try:
        ptb.parse_update(copy.deepcopy(data))
    except BadRequest:
        assert before == REFUSED
    else:
        assert before == "accepted"


def test_a_refusal_is_logged_by_kind_and_field_never_by_value(caplog: pytest.LogCaptureFixture) -> None:
    data = {"update_id": 5, "message": msg(GROUP, text="meet at the old mill", group_chat_created="sometimes")}
    with caplog.at_level(logging.WARNING, logger=updates.__name__), pytest.raises(BadRequest):
        updates.parse_update(data)
    [record] = caplog.records
    assert (vars(record)["kinds"], vars(record)["field"]) == (["message"], "message.group_chat_created")
    assert "old mill" not in repr(vars(record)) and "sometimes" not in repr(vars(record))


def test_the_chat_and_person_of_link_events_are_the_objects_as_sent() -> None:
    chat, person = {**GROUP, "future": [1], "empty": []}, {**ALICE, "new_field": {"a": 1}}
    update = updates.parse_update({"update_id": 1, "message": msg(chat, person)})
    assert update.effective_chat is not None and update.effective_user is not None
    assert (update.effective_chat.as_json(), update.effective_user.as_json()) == (chat, person)


@st.composite
def hostile_updates(draw: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """One or two kinds together, then up to three fields changed at once."""
    named = dict(bases())
    first, second = draw(st.sampled_from(sorted(named))), draw(st.sampled_from(sorted(named)))
    base = {**named[second], **named[first]}
    data, changed = copy.deepcopy(base), []
    for _ in range(draw(st.integers(0, 3))):
        candidates = [path for path, _ in paths(data)]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        data = mutated(data, path, draw(st.sampled_from([GONE, *HOSTILE])))
        changed.append(path)
    return base, data, changed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_updates())
def test_combined_kinds_and_changes_agree_with_the_library_or_are_refused_for_a_field_routing_reads(
    case: tuple[dict[str, Any], dict[str, Any], list[Path]],
) -> None:
    base, data, changed = case
    if seen_before(base) == REFUSED:
        return
    check(base, data, changed, Tally())
