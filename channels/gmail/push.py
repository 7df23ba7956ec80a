"""`POST /gmail/push`: a Pub/Sub push of one Gmail mailbox change (contract §6).

Body (Pub/Sub push format): `{"message": {"data": base64(JSON), "messageId", "publishTime",
"attributes"?}, "subscription"}`; Gmail's data is `{"emailAddress", "historyId"}`.
204 only once the change is durably queued (or deliberately dropped); 401 for a bad
token, 400 for a body that is not a Gmail push, 503 when queueing failed (Pub/Sub retries).

Gmail's historyIds are unsigned 64-bit integers. A larger one is acknowledged (204) and
dropped, never queued or stored: Pub/Sub redelivers anything not 2xx until the message
expires, and no retry would ever make that value valid.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from typing import Any

from aiohttp import web

from channels.gmail.oidc import PushVerifier
from channels.gmail.watches import Watches
from foundation import metrics
from foundation.errors import BadRequest, Unauthorized
from foundation.http import bearer, read_json_object

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_HISTORY_ID = 2**64 - 1
_HISTORY = re.compile(r"^[0-9]{1,20}$")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def parse(body: dict[str, Any]) -> tuple[str, str, str]:
    """(emailAddress, historyId, messageId) of a Gmail push, or `BadRequest`."""
    message = body.get("message")
    if not isinstance(message, dict):
        raise BadRequest("invalid_push", "message must be an object")
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
        raise BadRequest("invalid_push", "message.messageId is missing or malformed")
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise BadRequest("invalid_push", "message.data is missing")
    try:
        # Pub/Sub sends standard base64; accept the URL-safe alphabet too.
        raw = base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4), validate=True)
        # The standard parser, not orjson: orjson reads an integer beyond 64 bits as a float, and a
        # historyId out of range must be recognised as such (and acknowledged), not as bad JSON.
        decoded = json.loads(raw)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid_push", "message.data is not base64 JSON") from None
    if not isinstance(decoded, dict):
        raise BadRequest("invalid_push", "message.data is not a JSON object")
    address = decoded.get("emailAddress")
    history = decoded.get("historyId")
    if not isinstance(address, str) or "@" not in address or len(address) > 320:
        raise BadRequest("invalid_push", "emailAddress is missing or malformed")
    if isinstance(history, bool) or not isinstance(history, int | str) or not _HISTORY.match(str(history)):
        raise BadRequest("invalid_push", "historyId is missing or malformed")
    return address, str(int(history)), message_id


async def handle(request: web.Request, verifier: PushVerifier, watches: Watches) -> web.Response:
    try:
        await verifier.verify(bearer(request))
    except Unauthorized as exc:
        metrics.WEBHOOK_REJECTED.labels("gmail", exc.code).inc()
        raise
    address, history_id, message_id = parse(await read_json_object(request, limit=MAX_BODY))
    if int(history_id) > MAX_HISTORY_ID:
        metrics.DROPPED.labels("gmail", "history_id_out_of_range").inc()
        log.warning("gmail push with a historyId above 64 bits dropped")
        return web.Response(status=204)
    await watches.notify(address, history_id, message_id)
    return web.Response(status=204)
