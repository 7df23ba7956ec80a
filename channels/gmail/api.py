"""Gmail API calls the channel makes (users.watch, users.stop), through google-api-python-client.

The client is blocking (httplib2), so every call runs in this object's own bounded
thread pool; the event loop never waits on a socket. The discovery document ships
with the client (no network at start-up), and its root URL is `ALLY_GMAIL_API_URL`.
The client libraries are imported on the first call, in that pool: a gateway (or an
operator command) that never calls Gmail does not pay their import.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from foundation.errors import ClosedError, ProviderError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Watch:
    history_id: str
    expiration_ms: int


class GmailApi:
    def __init__(self, root_url: str, *, threads: int = 4, timeout: float = 30.0) -> None:
        self._root = root_url if root_url.endswith("/") else root_url + "/"
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gmail-api")
        self._service: Any = None
        self._closed = False

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise ClosedError("the Gmail client is closed")
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(ctx.run, fn))

    def _users(self) -> Any:
        import httplib2
        from googleapiclient import discovery

        if self._service is None:
            # Built once per process; the plain Http here is never used, each call brings its own.
            self._service = discovery.build(
                "gmail",
                "v1",
                http=httplib2.Http(timeout=self._timeout),
                static_discovery=True,
                client_options={"api_endpoint": self._root},
            )
        return self._service.users()

    def _call(self, token: str, make: Callable[[Any], Any]) -> Any:
        import google_auth_httplib2
        import httplib2
        from google.auth.exceptions import GoogleAuthError
        from google.oauth2.credentials import Credentials
        from googleapiclient.errors import HttpError

        # httplib2.Http is not thread-safe: one per call.
        inner = httplib2.Http(timeout=self._timeout)
        http = google_auth_httplib2.AuthorizedHttp(Credentials(token), http=inner)  # type: ignore[no-untyped-call]
        try:
            return make(self._users()).execute(http=http, num_retries=0)
        except HttpError as exc:
            status = int(exc.resp.status)
            retry = exc.resp.get("retry-after")
            raise ProviderError(
                f"gmail_{status}",
                status=status,
                retry_after=float(retry) if retry and retry.isdigit() else None,
            ) from None
        except GoogleAuthError:
            # AuthorizedHttp tries to refresh on 401 and cannot: the token was refused.
            raise ProviderError("gmail_unauthorized", status=401) from None
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise ProviderError(f"gmail_unreachable: {type(exc).__name__}") from None
        finally:
            inner.close()

    async def watch(self, token: str, topic: str, label_ids: tuple[str, ...] = ("INBOX",)) -> Watch:
        body = {"topicName": topic, "labelIds": list(label_ids), "labelFilterBehavior": "include"}
        answer = await self._run(lambda: self._call(token, lambda u: u.watch(userId="me", body=body)))
        try:
            return Watch(str(int(answer["historyId"])), int(answer["expiration"]))
        except (KeyError, TypeError, ValueError):
            raise ProviderError("gmail_bad_watch_answer") from None

    async def stop(self, token: str) -> None:
        await self._run(lambda: self._call(token, lambda u: u.stop(userId="me")))

    async def profile(self, token: str) -> str:
        answer = await self._run(lambda: self._call(token, lambda u: u.getProfile(userId="me")))
        address = answer.get("emailAddress") if isinstance(answer, dict) else None
        if not isinstance(address, str):
            raise ProviderError("gmail_bad_profile_answer")
        return address

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
