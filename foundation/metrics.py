"""Prometheus metrics (contract §8). Label values are channels, reasons and outcomes, never ids.

Under `ally-gateway serve --workers N` every process counts into its own files in
`PROMETHEUS_MULTIPROC_DIR` (set by the parent before this module is imported) and a scrape,
whichever process takes it, answers the sum over all of them (`exposition`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_STORED: list[Collector] = []


class StoredCounter(Collector):
    """A counter whose counts live in Redis, written by whichever process did the work (an
    operator command included, which exits before any scrape). `/metrics` reads them at
    scrape time (`set`); every gateway process shows the same totals."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self._name, self._documentation, self._label = name.removesuffix("_total"), documentation, label
        self._counts: dict[str, float] = {}
        REGISTRY.register(self)
        _STORED.append(self)

    def set(self, counts: Mapping[str, float]) -> None:
        self._counts = dict(counts)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in sorted(self._counts.items()):
            family.add_metric([value], count)
        yield family


EVENTS_IN = Counter("ally_events_in_total", "Events durably queued", ["channel"])
EVENTS_OUT = Counter("ally_events_out_total", "Events acknowledged by dedicated servers", ["channel"])
NOT_REPLICATED = Counter(
    "ally_writes_not_replicated_total",
    "Flushes of acknowledged writes that too few replicas confirmed within ALLY_ACK_TIMEOUT_MS (answered 503)",
)
EVENTS_EXPIRED = Counter("ally_events_expired_total", "Events dropped after ALLY_HOLD_TTL")
DELIVERIES = Counter("ally_deliveries_total", "Transaction attempts by outcome", ["outcome"])
DELIVERY_RETRIES = Counter(
    "ally_delivery_retries_total", "Transactions scheduled for another attempt, by why", ["reason"]
)
ERASURES = StoredCounter("ally_erasures_total", "User erasures finished, by outcome", "outcome")
DELIVERY_LATENCY = Histogram(
    "ally_delivery_latency_seconds",
    "From acceptance to acknowledgement by the dedicated server",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
# Sampled from Redis by the process that answers the scrape: with several processes, the latest sample counts.
QUEUE_USERS_DUE = Gauge(
    "ally_queue_users_scheduled", "Users with events waiting or in flight", multiprocess_mode="mostrecent"
)
QUEUE_DEPTH = Gauge("ally_queue_depth", "Events queued for all users (sampled)", multiprocess_mode="mostrecent")
QUEUE_OLDEST_AGE = Gauge(
    "ally_queue_oldest_event_age_seconds", "Age of the oldest queued event (sampled)", multiprocess_mode="mostrecent"
)
WEBHOOK_REJECTED = Counter("ally_webhook_rejected_total", "Inbound provider requests refused", ["channel", "reason"])
DROPPED = Counter("ally_inbound_dropped_total", "Inbound items acknowledged but not queued", ["channel", "reason"])
TOKEN_REFRESHES = Counter("ally_token_refreshes_total", "Access-token refreshes at providers", ["provider", "outcome"])
RATE_LIMIT_WAITS = Counter("ally_rate_limit_waits_total", "Outbound calls that waited for a rate limit", ["scope"])
RATE_LIMIT_WAIT_SECONDS = Histogram("ally_rate_limit_wait_seconds", "Time waited for outbound rate limits")
HTTP_REQUESTS = Counter("ally_http_requests_total", "HTTP requests answered", ["route", "status"])
AI_REQUESTS = Counter("ally_ai_requests_total", "AI relay requests by outcome", ["outcome"])
AI_RETRIES = Counter("ally_ai_retries_total", "AI attempts retried on the same model", ["reason"])
AI_FALLBACKS = Counter("ally_ai_fallbacks_total", "Moves down the AI fallback chain", ["reason"])
AI_TOKENS = Counter("ally_ai_tokens_total", "AI tokens metered", ["kind"])
REVOCATIONS = Counter("ally_oauth_revocations_total", "Grant revocations at providers", ["provider", "outcome"])
CONNECT_FLOWS = Counter("ally_oauth_connect_flows_total", "OAuth connect callbacks by outcome", ["provider", "outcome"])
TELEGRAM_CALLS = Counter("ally_telegram_api_calls_total", "Bot API calls by method and outcome", ["method", "outcome"])
MAIL_UPKEEP = Counter(
    "ally_mail_upkeep_total",
    "Gmail watch and Graph subscription upkeep by outcome (ok, failed, reauth_required, recreated)",
    ["channel", "outcome"],
)
TELEGRAM_NOTICES = Counter(
    "ally_telegram_notices_total", "Chats told their assistant is offline, or of expired messages", ["kind"]
)


_children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}


def child(counter: Counter, *labels: str) -> Counter:
    """`counter.labels(*labels)`, looked up once per process: for counts made per event. Label
    values are the code's own (channels, reasons, outcomes), so the set stays small."""
    key = (counter, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = counter.labels(*labels)
    return found


def exposition() -> bytes:
    """The text a scrape answers: this process's registry, or the sum over every process's files
    (then without the `process_*` and `python_*` collectors, which describe one process only)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    for collector in _STORED:
        registry.register(collector)
    return generate_latest(registry)
