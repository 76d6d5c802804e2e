"""Prometheus metrics, created on an injected registry (never at import time)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from outbox.domain.report import Report
from outbox.metrics_accounts import AccountMetrics
from outbox.metrics_channels import ChannelSeries, Sampled
from outbox.metrics_counters import CounterTable
from outbox.metrics_latency import DEFAULT_BY_CHANNEL, LatencyMetrics
from outbox.metrics_policy import PolicyMetrics
from outbox.ports import Sample, Settled

if TYPE_CHECKING:
    from outbox.ports import Attempt

# Issue 19: the label every channel string this process has not configured is counted under,
# whatever a producer wrote (labels stay bounded and carry no producer text).
UNKNOWN_CHANNEL = "(unknown)"


class Metrics:
    def __init__(
        self, registry: CollectorRegistry, channel_histograms: int = DEFAULT_BY_CHANNEL
    ) -> None:
        self.registry = registry
        # What every Python exporter shows by default (the process's CPU, memory and open
        # files; the collector's runs per generation), which an injected registry lacks.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.latency = LatencyMetrics(registry, channel_histograms)
        # Counted per message: plain dicts, not a label object per series (`CounterTable`).
        self.sends = CounterTable(
            "outbox_sends",
            "Send attempts by channel, the state they left the row in, and the error class "
            "(none, network, invalid, expired, or the API error's class).",
            ["channel", "outcome", "error_class"],
            registry,
        )
        self.webhooks = CounterTable(
            "outbox_webhooks",
            "Webhook bodies by channel and outcome (stored, or the reason they were refused).",
            ["channel", "outcome"],
            registry,
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
        # Read from the database every [metrics] sample_interval; the same on every replica.
        # Per channel (backlog, oldest due, DLR missing, paused; the rate): `ChannelSeries`.
        self.channels = ChannelSeries(registry)
        self.reconciler_lag = Gauge(
            "outbox_reconciler_lag_seconds",
            "Age of the oldest webhook row not yet processed (0: none waits).",
            registry=registry,
        )
        self.unprocessed_webhooks = Gauge(
            "outbox_unprocessed_webhooks",
            "Webhook rows not yet processed by a reconciler.",
            registry=registry,
        )
        self.parked = Gauge(
            "outbox_parked_statuses",
            "Statuses waiting for the message they name (not yet orphans).",
            registry=registry,
        )
        self.dead_tuples = Gauge(
            "outbox_table_dead_tuples",
            "Dead tuples of the outbox tables, from pg_stat_user_tables (vacuum debt).",
            ["table"],
            registry=registry,
        )
        self.oldest_transaction = Gauge(
            "outbox_oldest_transaction_age_seconds",
            "Age of the oldest open transaction in the database (it holds back vacuum).",
            registry=registry,
        )
        self.sender_slots = Gauge(
            "outbox_sender_slots",
            "This process's request slots: requests out (`requests`), and rows claimed ahead "
            "waiting for a slot (`waiting`).",
            ["kind"],
            registry=registry,
        )
        self.sample_time = Gauge(
            "outbox_sample_timestamp_seconds",
            "Unix time of the last successful read of the database gauges.",
            registry=registry,
        )
        self.sample_errors = Counter(
            "outbox_sample_errors",
            "Failed reads of the database gauges (they keep their last values).",
            registry=registry,
        )
        self.statements_invalid = Counter(
            "outbox_statements_invalid",
            "Statements the database refused for their text or the objects they name (SQLSTATE "
            "42, 0A, ...), by the loop that ran them: a bug or an unexpected schema.",
            ["part"],
            registry=registry,
        )
        # --- partner endpoint and account events (issue 18 §4 §5) ---
        self.accounts = AccountMetrics(registry)
        self._known: frozenset[str] = frozenset()
        self.policy = PolicyMetrics(registry, self.channels)  # issue 18

    def watch_sender(self, slots: Callable[[], tuple[int, int]]) -> None:
        """Read the sender's slots at each scrape (`Sender.slots`)."""
        self.sender_slots.labels("requests").set_function(lambda: slots()[0])
        self.sender_slots.labels("waiting").set_function(lambda: slots()[1])

    def know_channels(self, channels: Iterable[str]) -> None:
        """Channels whose per-channel gauges read 0 rather than nothing when idle; every other
        channel string is counted under UNKNOWN_CHANNEL."""
        listed = tuple(channels)
        self._known = frozenset(listed)
        self.channels.know_channels(listed)
        self.latency.know_channels(listed)

    def _label(self, channel: str) -> str:
        return channel if channel in self._known else UNKNOWN_CHANNEL

    def settled(self, rows: Iterable[Settled], error_class: str) -> None:
        """Rows housekeeping settled without a request (expired in the queue, an unknown
        channel), counted with the send outcomes."""
        for row in rows:
            self.sends.inc(self._label(row.channel), row.state.value, error_class)

    def reconciled(self, report: Report) -> None:
        for (channel, verdict), count in report.verdicts.items():
            self.statuses.labels(channel, verdict).inc(count)
        for channel, count in report.orphaned.items():
            self.orphans.labels(channel).inc(count)
        for (channel, kind), count in report.notes.items():
            self.notices.labels(channel, kind).inc(count)
        for channel, seconds in report.delivered_after:
            self.latency.delivered(channel, seconds)
        self.inbound.inc(report.inbound)
        for (kind, effect), count in report.account.items():
            self.accounts.events.labels(kind, effect).inc(count)
        self.unprocessable.inc(report.failed_rows)
        self.policy.reconciled(report)

    def webhook(self, channel: str, outcome: str) -> None:
        self.webhooks.inc(channel, outcome)

    def signature_refused(self, verdict: str) -> None:
        self.accounts.signature_failures.labels(verdict).inc()

    def unrouted(self, missed: str) -> None:
        self.accounts.unrouted_parts.labels(missed).inc()

    def sent(self, attempt: Attempt) -> None:
        channel, result = attempt.channel, attempt.result
        self.sends.inc(channel, result.state.value, attempt.error_class)
        self.latency.sent(attempt)
        self.policy.sent(attempt)

    def rate(self, channel: str, per_second: float) -> None:
        self.channels.rate(channel, per_second)

    def paused(self, channel: str, paused: bool) -> None:
        self.channels.paused(channel, paused)

    def sampled(self, sample: Sample) -> None:
        # Each read replaces the last whole, so channels that went quiet read 0 instead of
        # keeping a stale value. The breaker sets `paused` at once in the process that trips
        # it; the shared row is the truth every replica reports, also after that one died.
        backlog: dict[tuple[str, str], float] = {}
        for (channel, state), count in sample.backlog.items():
            key = (self._label(channel), state)
            backlog[key] = backlog.get(key, 0.0) + count
        oldest_due = self._folded(sample.oldest_due_seconds, max)
        dlr_missing = self._folded(sample.dlr_missing, sum)
        self.channels.sampled(Sampled(backlog, oldest_due, dlr_missing), sample.paused_channels)
        _set_all(self.dead_tuples, sample.dead_tuples)
        self.reconciler_lag.set(sample.reconciler_lag_seconds)
        self.unprocessed_webhooks.set(sample.unprocessed_webhooks)
        self.parked.set(sample.parked_statuses)
        self.oldest_transaction.set(sample.oldest_transaction_seconds)
        self.sample_time.set(time.time())

    def _folded(
        self, values: Mapping[str, float], fold: Callable[[Iterable[float]], float]
    ) -> dict[str, float]:
        """Per-channel values with the unconfigured channels' folded into one."""
        known = {c: v for c, v in values.items() if c in self._known}
        unknown = [v for c, v in values.items() if c not in self._known]
        return {**known, UNKNOWN_CHANNEL: fold(unknown)} if unknown else known

    def know_parts(self, parts: Iterable[str]) -> None:
        """Loops whose refused-statement count reads 0 rather than nothing."""
        for part in parts:
            self.statements_invalid.labels(part)

    def statement_invalid(self, part: str) -> None:
        self.statements_invalid.labels(part).inc()

    def sample_failed(self) -> None:
        self.sample_errors.inc()


def _set_all(gauge: Gauge, values: Mapping[str, float]) -> None:
    gauge.clear()
    for label, value in values.items():
        gauge.labels(label).set(value)
