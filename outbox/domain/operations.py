"""The operator's verbs as rules, without I/O: what a replay or cancel would do to each
selected row, and which rows a purge may delete.

A replay puts a finished row back in the queue as if it were new (the window and its TTL are
checked again when it is sent); it must never send twice what reached the user, so any sign of
delivery stops it unless the operator forces it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from outbox.domain.codes import Code
from outbox.domain.models import SentAs, State
from outbox.domain.window import WindowClosed, choose_content

REPLAYABLE = frozenset({State.FAILED, State.UNKNOWN, State.EXPIRED})
CANCELLABLE = frozenset({State.QUEUED, State.UNKNOWN})
# Where a purge goes on from: the last id deleted, or for contacts and pairs the last (channel,
# wa_id or bsuid); None to begin.
PurgeCursor = int | tuple[str, str] | None
# Terminal rows purge deletes by default; the delivery states can be added by the operator.
PURGEABLE = frozenset({State.READ, State.FAILED, State.EXPIRED, State.CANCELLED})
PURGEABLE_ON_REQUEST = frozenset({State.ACCEPTED, State.SENT, State.DELIVERED})


class Purged(StrEnum):
    """What a purge deletes, in the order it deletes it."""

    MESSAGES = "messages"
    WEBHOOK_EVENTS = "webhook_events"
    ORPHAN_STATUSES = "parked_statuses"
    # WABA-level events a reconciler recorded (quality, limits, templates): a log for the
    # operator; nothing decides on it.
    ACCOUNT_EVENTS = "account_events"
    # Users who wrote last before the retention period (and before their 24-hour window could
    # still be open): a contact that old decides no send, the window is closed either way.
    CONTACTS = "contacts"
    # Phone-BSUID pairs neither of whose spellings has a contact or an open row left: after
    # the contacts, whose purge frees them.
    IDENTITY_PAIRS = "identity_pairs"
    # Issue 19: the keys of purged messages are kept longer (`--keep-keys`), so a producer's
    # retry with one stays a no-op after its message is gone; these are the keys past that.
    IDEMPOTENCY_KEYS = "idempotency_keys"

    @property
    def label(self) -> str:
        """The name an operator reads in `outbox purge`'s output."""
        return _LABELS.get(self, self.value)


_LABELS = {
    Purged.ORPHAN_STATUSES: "orphan statuses",
    Purged.ACCOUNT_EVENTS: "account events",
    Purged.IDENTITY_PAIRS: "identity pairs",
    Purged.IDEMPOTENCY_KEYS: "idempotency keys",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A selected row, with what the decision needs."""

    id: int
    channel: str
    recipient: str
    state: State
    error_code: str | None
    attempts: int
    expires_at: datetime | None
    payload: Any
    fallback_template: Any
    last_inbound_at: datetime | None
    reached: str | None  # the furthest delivery status on record (sent, delivered, read)


@dataclass(frozen=True, slots=True)
class Decision:
    act: bool
    reason: str  # why not, or what will happen
    # A request for the row may have reached the API: it may arrive twice. Said in `reason`
    # too; counted apart for the summary.
    twice: bool = field(default=False, compare=False)


def may_have_arrived(row: Candidate) -> bool:
    """A request may have reached the API with no evidence either way: an `unknown` row, or one
    that expired so (`expired_unknown`), unlike a row that expired before any request."""
    if row.state is State.EXPIRED:
        return row.error_code == Code.EXPIRED_UNKNOWN
    return row.state is State.UNKNOWN


def decide_replay(
    row: Candidate,
    *,
    now: datetime,
    force: bool,
    new_expiry: datetime | None,
    window_margin: timedelta,
) -> Decision:
    if row.state not in REPLAYABLE:
        return Decision(False, f"state {row.state.value} is not replayable")
    if row.reached is not None and not force:
        return Decision(False, f"it was {row.reached} per its status history (--force sends it)")
    expires_at = new_expiry or row.expires_at
    if expires_at is not None and expires_at <= now:
        return Decision(False, "expires_at has passed (--expires-in gives it a new one)")
    notes = []
    if row.reached is not None:
        notes.append(f"forced: it was {row.reached}")
    twice = may_have_arrived(row)
    if twice:
        notes.append("the first request may have reached the API: may arrive twice")
    content = choose_content(
        row.payload,
        row.fallback_template,
        planned=None,
        last_inbound_at=row.last_inbound_at,
        now=now,
        margin=window_margin,
    )
    if isinstance(content, WindowClosed):
        notes.append("window closed and no fallback: fails unless the user writes first")
    elif content.sent_as is SentAs.FALLBACK_TEMPLATE:
        notes.append("window closed: sends the fallback template")
    else:
        notes.append(f"sends as {content.sent_as.value}")
    return Decision(True, "; ".join(notes), twice)


def decide_cancel(row: Candidate) -> Decision:
    if row.state not in CANCELLABLE:
        if row.state is State.SENDING:
            return Decision(False, "in flight: its outcome is about to be written")
        return Decision(False, f"state {row.state.value} cannot be cancelled")
    if row.state is State.UNKNOWN:
        return Decision(True, "cancelled; the request already made may still be delivered")
    return Decision(True, "cancelled")


def unwanted(
    row: Candidate, wanted: Collection[State], allowed: Collection[State]
) -> Decision | None:
    """A row named by --id in a state the command could act on but was not asked to."""
    if row.state in allowed and row.state not in wanted:
        state = row.state.value
        return Decision(False, f"state {state} is not selected (--state {state} selects it)")
    return None
