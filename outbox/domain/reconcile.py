"""Plans what a batch of status notifications does to the outbox rows they name.

The store locks the rows a batch can touch and hands them over as `Target`s; this module decides,
without I/O, every row change, every history entry and which statuses must wait (parked) because
their row is not known yet or is still being sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

from outbox.domain.codes import Code
from outbox.domain.delivery import Delivery, Verdict, merge
from outbox.domain.models import SentAs, State
from outbox.domain.notifications import StatusUpdate
from outbox.domain.window import refused_for_closed_window

# Verdicts beyond delivery.Verdict, for statuses that never reach the merge.
SUPERSEDED = "superseded"  # about an earlier send of a row that has been sent again since
FALLBACK = "fallback"  # window closed: the row goes back to the queue as its fallback template


@dataclass(frozen=True, slots=True)
class Target:
    """An outbox row, locked, as a status may find it."""

    id: int
    channel: str
    wamid: str | None
    sent_as: SentAs | None
    has_fallback: bool
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Located:
    """A status and where it came from: a webhook row, or an earlier parking."""

    channel: str
    update: StatusUpdate
    webhook_event_id: int | None = None
    parked_id: int | None = None


@dataclass(frozen=True, slots=True)
class RowChange:
    delivery: Delivery
    wamid: str | None
    sent_as: SentAs | None
    requeue: bool = False  # back to `queued`, ready now, as the fallback template


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    message_id: int
    wamid: str
    status: str
    at: datetime
    verdict: str
    error_code: str | None
    error_title: str | None
    error_detail: str | None
    webhook_event_id: int | None


@dataclass
class Plan:
    changes: dict[int, RowChange] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    park: list[Located] = field(default_factory=list)  # no row yet, or its send not committed
    resolved: list[int] = field(default_factory=list)  # parked ids that found their row
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, verdict)


def plan_statuses(statuses: list[Located], targets: list[Target], now: datetime) -> Plan:
    """Apply `statuses` in order to the rows they name; the result does not depend on order.

    A status finds its row by wamid, or (Cloud) by the outbox id echoed in
    biz_opaque_callback_data, always within its own channel. `targets` are the rows any of the
    statuses' wamids or outbox ids name, in any channel.
    """
    by_wamid = {(t.channel, t.wamid): t for t in targets if t.wamid is not None}
    by_id = {(t.channel, t.id): t for t in targets}
    # A wamid belongs to one message; a status must not hand it to a second one.
    owners = {t.wamid: t.id for t in targets if t.wamid is not None}
    plan = Plan()
    rows: dict[int, Target] = {}
    requeued: set[int] = set()
    for located in statuses:
        update = located.update
        found = by_wamid.get((located.channel, update.wamid))
        if found is None and update.outbox_id is not None:
            found = by_id.get((located.channel, update.outbox_id))
            if found is not None and owners.get(update.wamid, found.id) != found.id:
                found = None
        if found is None:
            _park(plan, located)
            continue
        target = rows.get(found.id, found)
        target, verdict = _apply(target, update)
        if verdict == Verdict.NOT_YET:
            _park(plan, located)
            continue
        if located.parked_id is not None:
            plan.resolved.append(located.parked_id)
        if target is not rows.get(found.id, found):
            rows[found.id] = target
            if verdict == FALLBACK:
                requeued.add(found.id)
            if target.wamid is not None:
                # Later statuses in this batch that carry only the wamid find the row too.
                by_wamid[(located.channel, target.wamid)] = found
                owners[target.wamid] = found.id
            plan.changes[found.id] = RowChange(
                target.delivery,
                target.wamid,
                target.sent_as,
                requeue=found.id in requeued,
            )
        error_code = None if update.error_code is None else str(update.error_code)
        plan.history.append(
            HistoryEntry(
                found.id,
                update.wamid,
                update.status,
                update.at or now,
                verdict,
                error_code,
                update.error_title,
                update.error_detail,
                located.webhook_event_id,
            )
        )
        plan.verdicts[(located.channel, verdict)] += 1
    return plan


def _park(plan: Plan, located: Located) -> None:
    plan.park.append(located)
    plan.verdicts[(located.channel, "parked")] += 1


def _apply(target: Target, update: StatusUpdate) -> tuple[Target, str]:
    delivery, verdict = merge(target.delivery, update)
    if verdict == Verdict.NOT_YET:
        # Its send answer is not committed yet (it may bring this very wamid): wait for it.
        return target, verdict
    if target.wamid is not None and update.wamid != target.wamid:
        return target, SUPERSEDED
    if target.delivery.state is State.QUEUED and target.wamid is not None:
        # The row waits to go out again (as its fallback): this is about the earlier send.
        return target, SUPERSEDED
    if verdict == Verdict.WINDOW_CLOSED:
        return _window_closed(target, update)
    if delivery == target.delivery and target.wamid is not None:
        return target, verdict
    return replace(target, delivery=delivery, wamid=update.wamid), verdict


def _window_closed(target: Target, update: StatusUpdate) -> tuple[Target, str]:
    """The send failed later for a closed window: the fallback goes next (once), or it fails."""
    detail = f"status failed with error {update.error_code}: {update.error_title or ''}".strip()
    current = target.delivery
    refused = refused_for_closed_window(target.sent_as, target.has_fallback, late=True)
    if refused.state is State.QUEUED:
        delivery = replace(
            current,
            state=State.QUEUED,
            error_code=Code.WINDOW_CLOSED,
            error_title=refused.title,
            error_detail=detail,
        )
        requeued = replace(target, delivery=delivery, wamid=update.wamid, sent_as=refused.sent_as)
        return requeued, FALLBACK
    if current.state is State.FAILED and current.error_code == Code.WINDOW_CLOSED:
        return target, Verdict.DUPLICATE
    failed_at = update.at if current.failed_at is None else current.failed_at
    delivery = replace(
        current,
        state=State.FAILED,
        failed_at=failed_at if update.at is None else min(failed_at or update.at, update.at),
        error_code=Code.WINDOW_CLOSED,
        error_title=refused.title,
        error_detail=detail,
    )
    return replace(target, delivery=delivery, wamid=update.wamid), Verdict.APPLIED
