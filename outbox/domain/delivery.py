"""Merges one webhook status onto an outbox row's delivery state, whatever order statuses come in.

Statuses arrive out of order, twice, or contradict each other across a user's devices
(waba-api.md §4.2, §9.3). `merge` is therefore built so that applying any set of statuses in
any order gives the same `Delivery` (WINDOW_CLOSED failures aside, since the caller acts on
those): the state only moves up the rank `sent < delivered < read`, every timestamp keeps the
earliest value seen, and the recorded error is the earliest failure's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from outbox.domain.codes import DELIVERY_RANK, WINDOW_CLOSED_CODES, Code
from outbox.domain.models import State
from outbox.domain.notifications import StatusUpdate

_PROGRESS = {"sent": State.SENT, "delivered": State.DELIVERED, "read": State.READ}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ErrorKey = tuple[bool, datetime, str, str, str]


@dataclass(frozen=True, slots=True)
class Delivery:
    state: State
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    error_code: str | None = None
    error_title: str | None = None
    error_detail: str | None = None


class Verdict(StrEnum):
    APPLIED = "applied"  # state and/or a timestamp changed
    DUPLICATE = "duplicate"  # nothing new (same status again, same or later timestamp)
    NO_DOWNGRADE = "no_downgrade"  # a status behind the row's state: state kept
    NOT_DELIVERY = "not_delivery"  # deleted / warning / unknown status value: recorded only
    WINDOW_CLOSED = "window_closed"  # 470 / 131047 before delivery: the caller falls back
    NOT_YET = "not_yet"  # the row is `sending`: its send result is not committed yet


def merge(current: Delivery, update: StatusUpdate) -> tuple[Delivery, Verdict]:
    """The row's new delivery state, and what kind of change it was.

    The returned `Delivery` is the one to store whenever it differs from `current`, whatever
    the verdict: a NO_DOWNGRADE status can still bring an earlier timestamp or, for a failure
    after delivery, the error for the audit trail.
    """
    if current.state is State.SENDING:
        return current, Verdict.NOT_YET
    target = _PROGRESS.get(update.status)
    if target is not None:
        return _progress(current, target, update.at)
    if update.status == "failed":
        return _failure(current, update)
    return current, Verdict.NOT_DELIVERY


def _rank(state: State) -> int:
    return DELIVERY_RANK.get(state, 0)


def _advances(state: State, target: State) -> bool:
    # A failure is what happened after `sent`, so `sent` must not undo it; only evidence of
    # delivery outranks a failure (multi-device can report both).
    floor = 1 if state is State.FAILED else _rank(state)
    return _rank(target) > floor


def _progress(current: Delivery, target: State, at: datetime | None) -> tuple[Delivery, Verdict]:
    # A later status implies the earlier ones happened no later than it, so its time bounds
    # theirs from above; taking the minimum (not just filling gaps) keeps the merge order-free.
    new = replace(
        current,
        sent_at=_earliest(current.sent_at, at),
        delivered_at=(
            current.delivered_at if target is State.SENT else _earliest(current.delivered_at, at)
        ),
        read_at=_earliest(current.read_at, at) if target is State.READ else current.read_at,
    )
    if _advances(current.state, target):
        return replace(new, state=target), Verdict.APPLIED
    if target is not current.state:
        return new, Verdict.NO_DOWNGRADE
    return new, Verdict.APPLIED if new != current else Verdict.DUPLICATE


def _failure(current: Delivery, update: StatusUpdate) -> tuple[Delivery, Verdict]:
    delivered = _rank(current.state) >= DELIVERY_RANK[State.DELIVERED]
    if not delivered and update.error_code in WINDOW_CLOSED_CODES:
        return current, Verdict.WINDOW_CLOSED
    code = Code.STATUS_FAILED if update.error_code is None else str(update.error_code)
    new = replace(
        current,
        state=current.state if delivered else State.FAILED,
        failed_at=_earliest(current.failed_at, update.at),
    )
    key = _error_key(update.at, code, update.error_title, update.error_detail)
    recorded = _recorded_error_key(current)
    if recorded is None or key < recorded:
        new = replace(
            new, error_code=code, error_title=update.error_title, error_detail=update.error_detail
        )
    if delivered:
        return new, Verdict.NO_DOWNGRADE
    return new, Verdict.APPLIED if new != current else Verdict.DUPLICATE


def _error_key(at: datetime | None, code: str, title: str | None, detail: str | None) -> _ErrorKey:
    # The earliest failure's error is kept; the rest of the key only breaks ties so that the
    # choice never depends on arrival order. Failures without a time sort last.
    return (at is None, at or _EPOCH, code, title or "", detail or "")


def _recorded_error_key(current: Delivery) -> _ErrorKey | None:
    if current.error_code is None:
        if current.failed_at is None:
            return None
        # A failure time with no error is read as a failure without a code, so that the key
        # always describes the stored error and failed_at together.
        return _error_key(
            current.failed_at, Code.STATUS_FAILED, current.error_title, current.error_detail
        )
    return _error_key(
        current.failed_at, current.error_code, current.error_title, current.error_detail
    )


def _earliest(known: datetime | None, seen: datetime | None) -> datetime | None:
    if known is None:
        return seen
    if seen is None:
        return known
    return min(known, seen)
