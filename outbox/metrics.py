"""Prometheus metrics, created on an injected registry (never at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outbox.domain.models import SendResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sends = Counter(
            "outbox_sends",
            "Send attempts by channel and the state they left the row in.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "outbox_api_request_seconds",
            "Time from posting a send request to its answer (or failure).",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.channel_paused = Gauge(
            "outbox_channel_paused",
            "1 while a channel's circuit breaker holds its sends back (in this process).",
            ["channel"],
            registry=registry,
        )
        self.webhooks = Counter(
            "outbox_webhooks",
            "Webhook bodies by channel and outcome (stored, or the reason they were refused).",
            ["channel", "outcome"],
            registry=registry,
        )

    def webhook(self, channel: str, outcome: str) -> None:
        self.webhooks.labels(channel, outcome).inc()

    def sent(self, channel: str, result: SendResult, seconds: float) -> None:
        self.sends.labels(channel, result.state.value).inc()
        self.api_latency.labels(channel).observe(seconds)

    def paused(self, channel: str, paused: bool) -> None:
        self.channel_paused.labels(channel).set(1 if paused else 0)
