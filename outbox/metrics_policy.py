"""The 2026 policy's metrics (issue 18), on the injected registry: send answers'
`message_status`, marketing opt-outs, billed messages and category mismatches."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from outbox.domain.report import Report
from outbox.metrics_channels import ChannelSeries
from outbox.metrics_counters import CounterTable
from outbox.ports import Attempt


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry, channels: ChannelSeries) -> None:
        self.message_status = CounterTable(
            "outbox_send_message_status",
            "Accepted sends by the answer's messages[].message_status (accepted, "
            "held_for_quality_assessment, paused; none when the answer had none).",
            ["channel", "status"],
            registry,
        )
        self.billable = Counter(
            "outbox_billable_messages",
            "Messages a status reported billable, once per message, by Meta's pricing "
            "category and type.",
            ["channel", "category", "type"],
            registry=registry,
        )
        # Opt-outs and category mismatches read 0 for every channel before the first one, so a
        # rate over them is defined (and an alert fires on the first): `ChannelSeries`.
        self._channels = channels

    def sent(self, attempt: Attempt) -> None:
        result = attempt.result
        if result.wamid is not None and result.state.value == "accepted":
            status = result.message_status or "none"
            self.message_status.inc(attempt.channel, status)
        if result.opt_out:
            self._channels.opted_out(attempt.channel, "answer")

    def reconciled(self, report: Report) -> None:
        for channel, count in report.opted_out.items():
            self._channels.opted_out(channel, "status", count)
        for priced in report.priced:
            if not priced.first:
                continue  # counted when its first pricing came
            if priced.pricing.billable and priced.pricing.per_message:
                pricing = priced.pricing
                labels = (priced.channel, pricing.category or "none", pricing.type or "none")
                self.billable.labels(*labels).inc()
            if priced.mismatched:
                self._channels.mismatched(priced.channel)
