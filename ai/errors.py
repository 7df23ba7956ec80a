"""The relay's errors, all under the gateway's one root (`foundation/errors.py`).

    GatewayError
    ├── ModelCallFailed      a model provider gave no usable answer before the first byte
    │                        (status and body as the provider sent them, when it sent any);
    │                        not `foundation.errors.ProviderError`, which is Google or Microsoft
    ├── StreamBroken         the provider's stream failed after bytes reached the caller
    ├── Untranslatable       a fallback provider cannot express the request; it is skipped
    └── ApiError
        └── PaymentRequired
            └── QuotaExceeded   402: the user's monthly token cap is reached

SDK and transport exceptions are translated into these at the provider boundary.
"""

from __future__ import annotations

from collections.abc import Mapping

from foundation.errors import GatewayError, PaymentRequired


class ModelCallFailed(GatewayError):
    """A failed attempt. `retryable` failures (429, 5xx, overload, timeouts, connection errors)
    are retried and then fall back; the others are the caller's to see."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        status: int | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.retry_after = retry_after
        self.model: str | None = None
        """The model whose attempt failed; set by the chain."""
        self.provider: str | None = None
        """That model's provider; set by the chain."""


class StreamBroken(GatewayError):
    """The stream stopped without its end: `reason` is `timeout` or `broken`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QuotaExceeded(PaymentRequired):
    def __init__(self, *, cap: int, used: int, resets_at: str) -> None:
        super().__init__("ai_quota_exceeded", "this month's AI token cap is reached")
        self.cap = cap
        self.used = used
        self.resets_at = resets_at

    def body(self) -> dict[str, object]:
        return {**super().body(), "cap": self.cap, "used": self.used, "resets_at": self.resets_at}


class Untranslatable(GatewayError):
    """The request uses a feature a fallback provider has no equivalent for: it is not sent there."""

    def __init__(self, feature: str) -> None:
        super().__init__(feature)
        self.feature = feature
