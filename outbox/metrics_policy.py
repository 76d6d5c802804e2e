"""The 2026 policy's metrics (issue 18), on the injected registry: send answers'
`message_status`, marketing opt-outs, billed messages and category mismatches."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from outbox.domain.report import Report
from outbox.ports import Attempt


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.message_status = Counter(
            "outbox_send_message_status",
            "Accepted sends by the answer's messages[].message_status (accepted, "
            "held_for_quality_assessment, paused; none when the answer had none).",
            ["channel", "status"],
            registry=registry,
        )
        self.opt_outs = Counter(
            "outbox_marketing_opt_outs",
            "Marketing opt-outs recorded from 131050, by where it came from (answer, status).",
            ["channel", "via"],
            registry=registry,
        )
        self.billable = Counter(
            "outbox_billable_messages",
            "Messages a status reported billable, once per message, by Meta's pricing "
            "category and type.",
            ["channel", "category", "type"],
            registry=registry,
        )
        self.category_mismatch = Counter(
            "outbox_category_mismatch",
            "Messages Meta billed under another category than the template registry holds.",
            ["channel"],
            registry=registry,
        )

    def know_channels(self, channels: Iterable[str]) -> None:
        """Rare events' series start at 0 for every channel, so a rate over them is defined
        (and an alert on them fires on the first one) before any has happened."""
        for channel in channels:
            for via in ("answer", "status"):
                self.opt_outs.labels(channel, via)
            self.category_mismatch.labels(channel)

    def sent(self, attempt: Attempt) -> None:
        result = attempt.result
        if result.wamid is not None and result.state.value == "accepted":
            status = result.message_status or "none"
            self.message_status.labels(attempt.channel, status).inc()
        if result.opt_out:
            self.opt_outs.labels(attempt.channel, "answer").inc()

    def reconciled(self, report: Report) -> None:
        for channel, count in report.opted_out.items():
            self.opt_outs.labels(channel, "status").inc(count)
        for priced in report.priced:
            if not priced.first:
                continue  # counted when its first pricing came
            if priced.pricing.billable and priced.pricing.per_message:
                pricing = priced.pricing
                labels = (priced.channel, pricing.category or "none", pricing.type or "none")
                self.billable.labels(*labels).inc()
            if priced.mismatched:
                self.category_mismatch.labels(priced.channel).inc()
