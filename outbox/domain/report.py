"""What reconciling did, for logs and metrics: the counts, and the facts a plan's changes reveal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from outbox.domain.models import State
from outbox.domain.pricing import Priced
from outbox.domain.reconcile import Plan, Target


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    channel: str
    message_id: int
    wamid: str | None
    error_code: str | None
    error_title: str | None


@dataclass
class Report:
    """What one batch did, for logs and metrics."""

    webhooks: int = 0
    inbound: int = 0
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, verdict)
    notes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, what)
    orphaned: Counter[str] = field(default_factory=Counter)  # by channel
    failed_rows: int = 0  # webhook rows that could not be processed at all
    # (channel, seconds from acceptance) of rows first seen delivered
    delivered_after: list[tuple[str, float]] = field(default_factory=list)
    failed: list[FailedDelivery] = field(default_factory=list)  # rows a status made `failed`
    account: Counter[tuple[str, str]] = field(default_factory=Counter)  # WABA events (kind, effect)
    priced: list[Priced] = field(default_factory=list)  # pricing written (issue 18)
    opted_out: Counter[str] = field(default_factory=Counter)  # 131050 statuses, by channel

    def add(self, other: Report) -> None:
        self.webhooks += other.webhooks
        self.inbound += other.inbound
        self.verdicts.update(other.verdicts)
        self.notes.update(other.notes)
        self.orphaned.update(other.orphaned)
        self.failed_rows += other.failed_rows
        self.delivered_after += other.delivered_after
        self.failed += other.failed
        self.account.update(other.account)
        self.priced += other.priced
        self.opted_out.update(other.opted_out)


def planned(plan: Plan, targets: Sequence[Target]) -> Report:
    """A plan's verdicts, the rows it makes `failed`, and, for rows it shows delivered for the
    first time, how long after acceptance (never negative: the two clocks differ)."""
    report = Report(verdicts=Counter(plan.verdicts))
    before = {t.id: t for t in targets}
    report.opted_out.update(before[i].channel for i in plan.opt_outs)
    for message_id, change in plan.changes.items():
        delivery, target = change.delivery, before[message_id]
        if delivery.state is State.FAILED and target.delivery.state is not State.FAILED:
            report.failed.append(
                FailedDelivery(
                    target.channel,
                    message_id,
                    change.wamid,
                    delivery.error_code,
                    delivery.error_title,
                )
            )
        delivered, accepted = delivery.delivered_at, target.accepted_at
        if delivered is not None and target.delivery.delivered_at is None and accepted:
            report.delivered_after.append(
                (target.channel, max(0.0, (delivered - accepted).total_seconds()))
            )
    return report
