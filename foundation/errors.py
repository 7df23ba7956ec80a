"""The gateway's one exception root.

    GatewayError
    ├── ConfigError          a setting is missing or invalid (names the variable)
    ├── StorageError         Redis did not answer or refused
    │   └── NotReplicated    fewer replicas than ALLY_ACK_REPLICAS confirmed a write in time
    ├── SealingError         an event could not be sealed to a server's key
    ├── VaultError           a ciphertext or wrapped key could not be opened
    │   └── KeyShredded      the user's data key is gone (erased)
    ├── ClosedError          an object was used after it was closed
    ├── StartupFailed        `serve --workers N`: a process kept exiting before it was ready
    ├── ProviderError        Google or Microsoft failed or refused (reason, status, retry_after)
    │   ├── ProviderUnavailable  transient: 5xx, timeout, network (retried; never marks a grant dead)
    │   └── ReauthRequired       the grant is dead (invalid_grant...); the user must reconnect
    └── ApiError             an answer to an HTTP caller: status, code, detail
        ├── BadRequest       400
        ├── Unauthorized     401
        ├── PaymentRequired  402 (ai/errors.py: QuotaExceeded, the monthly AI token cap)
        ├── Forbidden        403
        ├── NotFound         404
        │   └── NotConnected the user has no connection to that provider
        ├── Conflict         409
        ├── PayloadTooLarge  413
        ├── TooManyRequests  429 (with retry_after)
        └── StorageUnavailable  503 storage_unavailable (with retry_after)

Lower layers (aiohttp, provider SDKs) are translated at the boundary with
`raise X(...) from exc`, so callers handle one tree. Storage failures have one boundary of
their own: a `StorageError` or any redis-py error that reaches the HTTP middleware
(`foundation.http`) is answered 503 `storage_unavailable` there, on every route. The AI relay's provider
failures (`ai/errors.py`: ModelCallFailed, StreamBroken) hang under GatewayError too.
"""

from __future__ import annotations


class GatewayError(Exception):
    pass


class ConfigError(GatewayError):
    pass


class StorageError(GatewayError):
    pass


class NotReplicated(StorageError):
    """A write reached the primary, but too few replicas confirmed it: it could still be lost."""

    def __init__(self, confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the write in time")
        self.confirmed = confirmed
        self.wanted = wanted


class SealingError(GatewayError):
    pass


class VaultError(GatewayError):
    pass


class KeyShredded(VaultError):
    pass


class ClosedError(GatewayError):
    pass


class StartupFailed(GatewayError):
    """The processes of `serve --workers N` keep exiting before they are ready (a setting only
    a running process can check, say); the message names the last one's reason."""


class ProviderError(GatewayError):
    """`reason` is a short code safe to log; `status` is the provider's HTTP status when it answered."""

    def __init__(self, reason: str = "", *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{reason} (HTTP {status})" if status else reason)
        self.reason: str = reason
        self.status: int | None = status
        self.retry_after: float | None = retry_after


class ProviderUnavailable(ProviderError):
    pass


class ReauthRequired(ProviderError):
    """The refresh token was refused for good; the connection is marked `reauth_required`."""

    def __init__(self, provider: str, reason: str = "invalid_grant") -> None:
        super().__init__(f"{provider} connection needs to be reconnected ({reason})")
        self.provider = provider
        self.reason = reason


class ApiError(GatewayError):
    status = 400

    def __init__(self, code: str, detail: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        if status is not None:
            self.status = status

    def body(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class PaymentRequired(ApiError):
    status = 402


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class NotConnected(NotFound):
    def __init__(self, provider: str) -> None:
        super().__init__("connection_not_found", f"no {provider} connection for this user")
        self.provider = provider


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class TooManyRequests(ApiError):
    status = 429

    def __init__(self, code: str, detail: str = "", *, retry_after: float) -> None:
        super().__init__(code, detail)
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {**super().body(), "retry_after": self.retry_after}


class StorageUnavailable(ApiError):
    """What every route answers while storage fails: callers (providers, servers) retry."""

    status = 503
    retry_after = 1.0

    def __init__(self) -> None:
        super().__init__("storage_unavailable", "storage is unavailable; retry later")
