"""Reading a Bot API call from a dedicated server: JSON, form-encoded or multipart, as Telegram takes them."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from foundation import http
from foundation.errors import ApiError, BadRequest, PayloadTooLarge
from foundation.http import read_body

from . import jsontext
from .wire import Upload

MAX_FIELDS = 1 << 20
MAX_UPLOAD = 50 * 1024 * 1024  # Telegram's own limit for files a bot sends
MAX_PARTS = 32
MIN_UPLOAD_RATE = 64 * 1024
"""Bytes a second an upload must average (after http.BODY_TIMEOUT) to be read to its end."""
# Bot API parameter names are snake_case words; anything else cannot be a parameter, and names,
# file names and types with control characters cannot even be written into the upstream request.
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MALFORMED_PARTS = (BadContentDispositionHeader, BadContentDispositionParam)
"""aiohttp's warnings for a Content-Disposition it cannot read; `setup` makes them errors, so such a
part is refused (400) instead of half-read and reported on stderr with its file name in it."""


async def read_call(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    """The call's parameters (JSON types kept) and its uploaded files."""
    params, uploads = await _read(request)
    for name in (*params, *(u.name for u in uploads)):
        if not _NAME.fullmatch(name):
            raise BadRequest("invalid_parameter", "parameter names are letters, digits and underscores")
    for upload in uploads:
        if _CONTROL.search(upload.filename) or _CONTROL.search(upload.content_type):
            raise BadRequest("invalid_multipart", "a file name or type holds control characters")
    return params, uploads


async def _read(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    ctype = request.content_type
    if not request.body_exists:
        return {}, []
    if ctype == "application/json":
        return _json(await read_body(request, limit=MAX_FIELDS)), []
    if ctype == "application/x-www-form-urlencoded" or "Content-Type" not in request.headers:
        return _form_or_json(request, await read_body(request, limit=MAX_FIELDS)), []
    if ctype == "multipart/form-data":
        _refuse_declared(request, MAX_UPLOAD + MAX_PARTS * MAX_FIELDS)
        try:
            return await _multipart(request)
        except TimeoutError:
            raise _too_slow() from None
    raise BadRequest("unsupported_media_type", _KINDS, status=415)


_KINDS = "send application/json, application/x-www-form-urlencoded or multipart/form-data"


def _form_or_json(request: web.Request, body: bytes) -> dict[str, Any]:
    """A form, or JSON whose type was not said: no Content-Type at all, or curl's form label for
    `-d`. A body starting with `{` cannot be a form (parameter names are letters, digits and
    underscores), so reading it as JSON never misreads a form."""
    if body.lstrip()[:1] == b"{":
        return _json(body)
    if "Content-Type" not in request.headers:
        raise BadRequest("missing_content_type", "the Content-Type header is missing; " + _KINDS, status=415)
    charset = request.charset or "utf-8"
    try:
        # As aiohttp reads a form, but keeping every value so a repeated name is seen.
        pairs = parse_qsl(body.rstrip().decode(charset), keep_blank_values=True, encoding=charset)
    except (ValueError, LookupError) as exc:  # LookupError: a charset Python does not know
        raise BadRequest("invalid_form", "could not read the form body") from exc
    params: dict[str, Any] = {}
    for name, value in pairs:
        _once(params, name)
        params[name] = value
    return params


def _json(body: bytes) -> dict[str, Any]:
    value = jsontext.loads(body, "the body", "invalid_json")
    if not isinstance(value, dict):
        raise BadRequest("invalid_json", "body must be a JSON object")
    return value


def _once(params: dict[str, Any], name: str) -> None:
    # Two values for one name: which one a reader keeps differs, so neither is guessed at.
    if name in params:
        raise BadRequest("invalid_parameter", "a parameter is given twice")


def _refuse_declared(request: web.Request, limit: int) -> None:
    # Refused on the declared length, before waiting for a body that will not be read anyway.
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("payload_too_large", f"body over {limit} bytes")


def _too_slow() -> ApiError:
    return ApiError("body_timeout", "the request body did not arrive in time", status=408)


async def _multipart(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    params: dict[str, Any] = {}
    uploads: list[Upload] = []
    total = 0
    # An upload may take long, but not forever: BODY_TIMEOUT, plus the time its bytes so far need at
    # MIN_UPLOAD_RATE. A client trickling bytes runs out of time; a big file on a fair link does not.
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(http.BODY_TIMEOUT) as deadline:
            reader = await request.multipart()
            for _ in range(MAX_PARTS + 1):
                part = await reader.next()
                if part is None:
                    return params, uploads
                if not isinstance(part, BodyPartReader) or not part.name:
                    raise BadRequest("invalid_multipart", "every part needs a name")
                chunks: list[bytes] = []
                while chunk := await part.read_chunk(1 << 16):
                    total += len(chunk)
                    if total > MAX_UPLOAD:
                        raise PayloadTooLarge("payload_too_large", f"uploads over {MAX_UPLOAD} bytes")
                    chunks.append(chunk)
                    deadline.reschedule(start + http.BODY_TIMEOUT + total / MIN_UPLOAD_RATE)
                data = b"".join(chunks)
                if part.name in params or any(u.name == part.name for u in uploads):
                    raise BadRequest("invalid_parameter", "a parameter is given twice")
                if part.filename is None:
                    if len(data) > MAX_FIELDS:
                        raise PayloadTooLarge("payload_too_large", f"a field over {MAX_FIELDS} bytes")
                    params[part.name] = data.decode("utf-8", errors="strict")
                else:
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    uploads.append(Upload(part.name, part.filename, ctype, data))
    except (ValueError, UnicodeDecodeError, AssertionError, HttpProcessingError, *MALFORMED_PARTS) as exc:
        raise BadRequest("invalid_multipart", "could not read the multipart body") from exc
    raise BadRequest("invalid_multipart", f"at most {MAX_PARTS} parts")
