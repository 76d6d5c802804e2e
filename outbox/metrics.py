"""Prometheus metrics, created on an injected registry (never at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outbox.db.reconcile_store import Report
from outbox.domain.models import SendResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._send_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
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
        self.channel_rate = Gauge(
            "outbox_channel_rate_per_second",
            "A channel's effective send rate: the configured one, or less after throttling.",
            ["channel"],
            registry=registry,
        )
        self.webhooks = Counter(
            "outbox_webhooks",
            "Webhook bodies by channel and outcome (stored, or the reason they were refused).",
            ["channel", "outcome"],
            registry=registry,
        )

        self.statuses = Counter(
            "outbox_status_updates",
            "Status notifications by channel and what they did to their message "
            "(applied, duplicate, no_downgrade, not_delivery, superseded, fallback, parked).",
            ["channel", "verdict"],
            registry=registry,
        )
        self.orphans = Counter(
            "outbox_orphan_statuses",
            "Statuses that named no known message within the orphan horizon.",
            ["channel"],
            registry=registry,
        )
        self.inbound = Counter(
            "outbox_inbound_messages",
            "User messages seen in webhooks (they open the 24-hour window).",
            registry=registry,
        )
        self.notices = Counter(
            "outbox_webhook_notices",
            "Parts of webhook bodies that changed nothing: API error notices, ignored parts.",
            ["channel", "kind"],
            registry=registry,
        )
        self.unprocessable = Counter(
            "outbox_webhooks_unprocessable",
            "Webhook rows the reconciler could not process at all (their error is recorded).",
            registry=registry,
        )

    def reconciled(self, report: Report) -> None:
        for (channel, verdict), count in report.verdicts.items():
            self.statuses.labels(channel, verdict).inc(count)
        for channel, count in report.orphaned.items():
            self.orphans.labels(channel).inc(count)
        for (channel, kind), count in report.notes.items():
            self.notices.labels(channel, kind).inc(count)
        self.inbound.inc(report.inbound)
        self.unprocessable.inc(report.failed_rows)

    def webhook(self, channel: str, outcome: str) -> None:
        self.webhooks.labels(channel, outcome).inc()

    def sent(self, channel: str, result: SendResult, seconds: float) -> None:
        # Once per message: the label children are looked up once, not per call.
        key = (channel, result.state.value)
        if key not in self._send_children:
            self._send_children[key] = self.sends.labels(*key)
        self._send_children[key].inc()
        if channel not in self._latency_children:
            self._latency_children[channel] = self.api_latency.labels(channel)
        self._latency_children[channel].observe(seconds)

    def rate(self, channel: str, per_second: float) -> None:
        self.channel_rate.labels(channel).set(per_second)

    def paused(self, channel: str, paused: bool) -> None:
        self.channel_paused.labels(channel).set(1 if paused else 0)
