"""Plans what a batch's statuses do to the outbox rows (the bodies are read by
outbox.domain.digest).

The store locks the rows the statuses can touch and hands them over as `Target`s, and
`plan_statuses` decides, without I/O, every row change, every history entry and which statuses
must wait (parked) because their row is not known yet or is still being sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from outbox.domain.codes import Code
from outbox.domain.delivery import Delivery, Verdict, merge
from outbox.domain.digest import Located
from outbox.domain.models import SentAs, State
from outbox.domain.notifications import StatusUpdate
from outbox.domain.pricing import Pricing
from outbox.domain.window import refused_for_closed_window

# Verdicts beyond delivery.Verdict, for statuses that never reach the merge.
SUPERSEDED = "superseded"  # about an earlier send of a row that has been sent again since
FALLBACK = "fallback"  # window closed: the row goes back to the queue as its fallback template
OPTED_OUT_CODE = 131050  # the user stopped marketing messages: recorded as their opt-out
# Issue 18: a held message dropped because its template was paused (132015): back to the queue,
# held for the template (not failed, its attempt given back), like a 132015 send answer.
TEMPLATE_PAUSED = "template_paused"
TEMPLATE_PAUSED_CODE = 132015


@dataclass(frozen=True, slots=True)
class Target:
    """An outbox row, locked, as a status may find it."""

    id: int
    channel: str
    wamid: str | None
    sent_as: SentAs | None
    has_fallback: bool
    delivery: Delivery
    accepted_at: datetime | None = None
    # The message ids of the row's earlier sends (outbox.message_sends): never the current one.
    earlier: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RowChange:
    delivery: Delivery
    wamid: str | None
    sent_as: SentAs | None
    requeue: bool = False  # back to `queued`, ready now, as the fallback template
    hold: bool = False  # back to `queued`, held for its paused template (issue 18)


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


@dataclass(frozen=True, slots=True)
class EarlierSend:
    """A send of a row that a requeue ends: its id stays in the row's history."""

    message_id: int
    wamid: str
    sent_as: SentAs | None
    accepted_at: datetime | None


@dataclass
class Plan:
    changes: dict[int, RowChange] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    ended: list[EarlierSend] = field(default_factory=list)  # sends a fallback requeue ended
    park: list[Located] = field(default_factory=list)  # no row yet, or its send not committed
    resolved: list[int] = field(default_factory=list)  # parked ids that found their row
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, verdict)
    # Issue 18: the pricing statuses report, by row (the latest in the batch); the rows whose
    # failure says the user stopped marketing messages (131050), with the status's time.
    pricing: dict[int, Pricing] = field(default_factory=dict)
    opt_outs: dict[int, datetime] = field(default_factory=dict)


def plan_statuses(statuses: Sequence[Located], targets: Sequence[Target], now: datetime) -> Plan:
    """Apply `statuses` in order to the rows they name; the result does not depend on order.

    A status finds its row by wamid, or (Cloud) by the outbox id echoed in
    biz_opaque_callback_data, always within its own channel. `targets` are the rows any of the
    statuses' wamids or outbox ids name, in any channel.

    The outbox id is sequential, so anyone can name a row by it; only an authenticated status
    may. An unauthenticated one finds its row by wamid (which only the API and we know), or
    waits parked like any status naming no known row: a forged `read` must not resolve an
    `unknown` row, whose resend would then never happen.
    """
    by_wamid = {(t.channel, w): t for t in targets for w in _ids(t)}
    by_id = {(t.channel, t.id): t for t in targets}
    # A wamid belongs to one message; a status must not hand it to a second one.
    owners = {w: t.id for t in targets for w in _ids(t)}
    plan = Plan()
    rows: dict[int, Target] = {}
    requeued: set[int] = set()
    held: set[int] = set()  # requeued for a paused template
    for located in statuses:
        update = located.update
        found = by_wamid.get((located.channel, update.wamid))
        if found is None and update.outbox_id is not None and located.authenticated:
            found = by_id.get((located.channel, update.outbox_id))
            if found is not None and owners.get(update.wamid, found.id) != found.id:
                found = None
        if found is None:
            _park(plan, located)
            continue
        before = rows.get(found.id, found)
        target, verdict = _apply(before, update)
        if verdict == Verdict.NOT_YET:
            _park(plan, located)
            continue
        if located.parked_id is not None:
            plan.resolved.append(located.parked_id)
        _policy_facts(plan, found.id, update, now)
        if target is not rows.get(found.id, found):
            rows[found.id] = target
            if verdict in (FALLBACK, TEMPLATE_PAUSED):
                requeued.add(found.id)
                if verdict == TEMPLATE_PAUSED:
                    held.add(found.id)
                ended = EarlierSend(found.id, update.wamid, before.sent_as, before.accepted_at)
                plan.ended.append(ended)
            if target.wamid is not None:
                # Later statuses in this batch that carry only the wamid find the row too.
                by_wamid[(located.channel, target.wamid)] = found
                owners[target.wamid] = found.id
            plan.changes[found.id] = RowChange(
                target.delivery,
                target.wamid,
                target.sent_as,
                requeue=found.id in requeued,
                hold=found.id in held,
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


def _policy_facts(plan: Plan, message_id: int, update: StatusUpdate, now: datetime) -> None:
    if update.pricing is not None:
        plan.pricing[message_id] = update.pricing
    if update.status == "failed" and update.error_code == OPTED_OUT_CODE:
        plan.opt_outs[message_id] = update.at or now


def _ids(target: Target) -> set[str]:
    """Every message id a status may name the row by: its current send's and its earlier ones."""
    return set(target.earlier) | ({target.wamid} if target.wamid is not None else set())


def _earlier_send(target: Target, wamid: str) -> bool:
    """Whether a status with this `wamid` is about a send of the row before its current one: a
    recorded earlier id, any id of a row waiting in the queue to go out again, or an id the row
    never had while it has another (a send whose answer was lost). A row with no id takes it:
    a status found by the outbox id belongs to its current send."""
    if wamid == target.wamid:
        return target.delivery.state is State.QUEUED
    return wamid in target.earlier or target.wamid is not None


def _park(plan: Plan, located: Located) -> None:
    plan.park.append(located)
    plan.verdicts[(located.channel, "parked")] += 1


def _apply(target: Target, update: StatusUpdate) -> tuple[Target, str]:
    delivery, verdict = merge(target.delivery, update)
    if verdict == Verdict.NOT_YET:
        # Its send answer is not committed yet (it may bring this very wamid): wait for it.
        return target, verdict
    if _earlier_send(target, update.wamid):
        return target, SUPERSEDED
    if verdict == Verdict.WINDOW_CLOSED:
        return _window_closed(target, update)
    if (
        update.status == "failed"
        and update.error_code == TEMPLATE_PAUSED_CODE
        and target.delivery.state in (State.ACCEPTED, State.UNKNOWN)
    ):
        return _template_paused(target, update)
    if delivery == target.delivery and target.wamid is not None:
        return target, verdict
    return replace(target, delivery=delivery, wamid=update.wamid), verdict


def _template_paused(target: Target, update: StatusUpdate) -> tuple[Target, str]:
    delivery = replace(
        target.delivery,
        state=State.QUEUED,
        error_code=str(TEMPLATE_PAUSED_CODE),
        error_title=update.error_title,
        error_detail=update.error_detail,
    )
    # The dropped send's id stays on the row as an earlier send's, as for a fallback.
    requeued = replace(
        target, delivery=delivery, wamid=update.wamid, earlier=target.earlier | {update.wamid}
    )
    return requeued, TEMPLATE_PAUSED


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
        # The refused send's id stays on the queued row (as an earlier send's) until the claim.
        requeued = replace(
            target,
            delivery=delivery,
            wamid=update.wamid,
            sent_as=refused.sent_as,
            earlier=target.earlier | {update.wamid},
        )
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
