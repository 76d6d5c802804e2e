"""Reads a batch of stored webhook bodies: `digest` sorts what they say (inbound messages, number
changes, identities, statuses, account events, notes) before any outbox row is looked at; what the
statuses then do to the rows is planned in outbox.domain.reconcile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import assert_never

from outbox.domain.account_events import AccountEvent
from outbox.domain.account_plan import AccountSeen
from outbox.domain.notifications import (
    ErrorNotice,
    Ignored,
    Inbound,
    StatusUpdate,
    parse_notification,
)
from outbox.domain.routing import UNROUTED
from outbox.domain.user_ids import (
    Addressed,
    Identities,
    NumberChanged,
    Paired,
    UserIdChanged,
)


@dataclass(frozen=True, slots=True)
class Located:
    """A status and where it came from: a webhook row, or an earlier parking.

    `authenticated` is False for a body its channel took without credentials (webhook_auth =
    "none"): such a status finds its row by wamid only (see `plan_statuses`).
    """

    channel: str
    update: StatusUpdate
    webhook_event_id: int | None = None
    parked_id: int | None = None
    authenticated: bool = True


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """A stored webhook body, decoded, the channel it was posted to, and whether its credentials
    were checked (rows written by other means than the receiver count as checked)."""

    id: int
    channel: str
    body: object
    authenticated: bool = True


@dataclass(frozen=True, slots=True)
class InboundSeen:
    channel: str
    wa_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class NumberMove:
    """A user's new number inherits the window of the old one."""

    channel: str
    old_wa_id: str
    new_wa_id: str


@dataclass
class Digest:
    """What a batch of webhook bodies says, before any outbox row is looked at."""

    inbound: list[InboundSeen] = field(default_factory=list)
    moves: list[NumberMove] = field(default_factory=list)
    identities: Identities = field(default_factory=Identities)
    statuses: list[Located] = field(default_factory=list)
    # (webhook id, the note its row keeps as `error`: None when nothing needs saying), in row order
    notes: list[tuple[int, str | None]] = field(default_factory=list)
    noted: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, error|ignored)
    account: list[AccountSeen] = field(default_factory=list)  # WABA-level events (account_plan)


def digest(rows: Sequence[WebhookRow]) -> Digest:
    """Every event of every body, sorted by kind; never raises, whatever the bodies hold."""
    result = Digest()
    for row in rows:
        notes: list[str] = []
        if row.channel == UNROUTED:
            # No channel claimed it at the receiver: kept for an operator, applied to nothing.
            result.notes.append((row.id, "unrouted: no configured channel claims it"))
            result.noted[(row.channel, "unrouted")] += 1
            continue
        for event in parse_notification(row.body):
            match event:
                case Inbound():
                    result.inbound.append(InboundSeen(row.channel, event.wa_id, event.at))
                case StatusUpdate():
                    located = Located(row.channel, event, row.id, authenticated=row.authenticated)
                    result.statuses.append(located)
                case NumberChanged():
                    result.moves.append(NumberMove(row.channel, event.old_wa_id, event.new_wa_id))
                    notes.append(f"number changed to {event.new_wa_id}")
                case Paired() | UserIdChanged() | Addressed():
                    if (note := result.identities.add(row.channel, event)) is not None:
                        notes.append(note)
                case ErrorNotice():
                    notes.append(f"error {event.code}: {event.title}")
                    result.noted[(row.channel, "error")] += 1
                case AccountEvent():
                    result.account.append(
                        AccountSeen(row.channel, event, row.id, row.authenticated)
                    )
                case Ignored():
                    notes.append(f"ignored: {event.reason}")
                    result.noted[(row.channel, "ignored")] += 1
                case _:
                    assert_never(event)
        result.notes.append((row.id, "; ".join(notes) or None))
    return result
