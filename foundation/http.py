"""HTTP plumbing shared by every route: request ids, JSON errors, bodies, bearer tokens."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import RedisError

from foundation import metrics
from foundation.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    StorageError,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
)
from foundation.logs import accept_request_id, request_id

log = logging.getLogger(__name__)

MAX_JSON_BODY = 1 << 20
BODY_TIMEOUT = 30.0
"""Seconds a client gets to send a whole body; a slower one gets 408 and frees the handler.
Connection-level limits (idle connections, request heads) are in `foundation.listener`."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)


async def stamp_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every answer names its request id, streamed files and redirects too."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-Id"] = rid


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(exc: ApiError) -> web.Response:
    headers = {}
    if isinstance(exc, TooManyRequests | StorageUnavailable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return json_response(exc.body(), status=exc.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error with a code; nothing internal reaches the caller."""
    rid = accept_request_id(request.headers.get("X-Request-Id"))
    token = request_id.set(rid)
    request[REQUEST_ID] = rid
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = answer_for(exc, route)
        except Exception as exc:
            response = answer_for(exc, route)
        metrics.child(metrics.HTTP_REQUESTS, route, str(response.status)).inc()
        return response
    finally:
        request_id.reset(token)


def answer_for(exc: Exception, route: str) -> web.Response:
    """The JSON answer to a handler's failure (`route` names it in the log); also used by
    `foundation.fastpath`, which answers its requests without this middleware."""
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(PayloadTooLarge("payload_too_large", "request body is too large"))
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return error_response(ApiError(code, exc.reason, status=exc.status))
    if isinstance(exc, StorageError | RedisError):
        # The one place storage failures become an answer: every route, every cause (Redis
        # down, failing over, out of memory, too few replicas confirming a write).
        log.warning("storage unavailable", extra={"route": route, "error": type(exc).__name__})
        return error_response(StorageUnavailable())
    log.error("unhandled error", exc_info=exc, extra={"route": route})
    return error_response(ApiError("internal_error", "the gateway failed to handle this request", status=500))


async def write_within(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write part of a streamed answer. A caller that has taken none of it for BODY_TIMEOUT has its
    connection aborted (ConnectionResetError here): a client that stops reading must not hold the
    handler, nor what it streams from, for as long as it keeps the connection open."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the caller stopped reading") from None


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` (from the
    Content-Length header, or while it streams in) and with 408 when it comes too slowly."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("payload_too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            # StreamReader.read(n) returns whatever has arrived, so read until the end.
            while chunk := await request.content.read(limit + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge("payload_too_large", f"body over {limit} bytes")
    except TimeoutError:
        raise ApiError("body_timeout", "the request body did not arrive in time", status=408) from None
    except (OSError, ValueError, web.HTTPException, HttpProcessingError) as exc:
        raise BadRequest("bad_body", "could not read the request body") from exc
    return b"".join(chunks)


async def read_json(request: web.Request, *, limit: int = MAX_JSON_BODY) -> Any:
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        raise BadRequest("invalid_json", "a JSON body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "body is not valid JSON") from None


async def read_json_object(request: web.Request, *, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    value = await read_json(request, limit=limit)
    if not isinstance(value, dict):
        raise BadRequest("invalid_json", "body must be a JSON object")
    return value


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    # Every credential the gateway issues or accepts is ASCII; header bytes that are not UTF-8
    # arrive as lone surrogates, which no later step could even encode.
    if scheme.lower() != "bearer" or not value.strip() or not value.isascii():
        raise Unauthorized("unauthorized", "missing or malformed bearer token")
    return value.strip()


def constant_time_equal(a: str, b: str) -> bool:
    # surrogateescape: a header's undecodable bytes compare as the bytes they were, never raise.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))
