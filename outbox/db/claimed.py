"""The rows a claim leased, read inside the claim's transaction: decoded, planned, recorded.

Reading happens before the commit, so anything that fails here rolls the claim back instead of
leaving rows leased to a worker that never saw them. Each row's JSON was decoded by the guarded
decoder (`outbox.db.jsonb`): a document it refused marks only its own row. What each row is
about to be sent as is written before any request leaves when the window decided it (a row
with a `fallback_template`), so a row whose answer is never written (a crash, a rescued lease)
still knows what went out. A row without one can only go as its payload: its `sent_as` follows
from the payload alone and is written with the answer, which spares every such row a second
UPDATE in the claim (issue 16: one more row version per send).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.jsonb import reason
from outbox.domain import window
from outbox.domain.models import ClaimedMessage, SentAs

PLAN_COLUMNS = ArrayColumns((("id", BigInteger()), ("sent_as", Text())))
RECORD_PLANS = PLAN_COLUMNS.statement(
    f"""
    UPDATE outbox.messages AS m SET sent_as = p.sent_as
    FROM {PLAN_COLUMNS.unnest("p")}
    WHERE m.id = p.id
    """
)


class ClaimedRow(NamedTuple):
    """A row the claim statement returns, in its RETURNING order (`outbox.db.tuples`)."""

    id: int
    channel: str
    recipient: str
    payload: Any
    fallback_template: Any
    attempts: int
    created_at: datetime
    expires_at: datetime | None
    priority: int
    sent_as: str | None
    last_inbound_at: datetime | None
    last_error: str | None
    more: bool  # the channel has more rows ready than the claim was granted


async def read_claimed(
    connection: AsyncConnection, rows: Sequence[ClaimedRow], now: datetime, margin: timedelta
) -> list[ClaimedMessage]:
    """The claimed rows best first, each with its plan; `now` is the database's clock."""
    read = [_message(row, now, margin) for row in sorted(rows, key=_best_first)]
    recorded = [
        (m.id, m.planned.value)
        for m, before in read
        if m.planned is not None and m.planned is not before and m.fallback_template is not None
    ]
    if recorded:
        await connection.execute(RECORD_PLANS, PLAN_COLUMNS.params(recorded))
    return [m for m, _ in read]


def _best_first(row: ClaimedRow) -> tuple[int, int]:
    return -row.priority, row.id


def _message(
    row: ClaimedRow, now: datetime, margin: timedelta
) -> tuple[ClaimedMessage, SentAs | None]:
    """The row as the sender holds it, planned (issue 16: built once, it is the hot path),
    and the plan it came with."""
    before = SentAs(row.sent_as) if row.sent_as else None
    unreadable = _unreadable(row.payload, row.fallback_template)
    planned = before
    if unreadable is None:
        planned = (
            window.plan(
                row.payload,
                row.fallback_template,
                previous=before,
                last_inbound_at=row.last_inbound_at,
                now=now,
                margin=margin,
            )
            or before
        )
    message = ClaimedMessage(
        id=row.id,
        channel=row.channel,
        recipient=row.recipient,
        payload=row.payload,
        fallback_template=row.fallback_template,
        attempts=row.attempts,
        created_at=row.created_at,
        expires_at=row.expires_at,
        planned=planned,
        last_inbound_at=row.last_inbound_at,
        unreadable=unreadable,
        last_error=row.last_error,
        priority=row.priority,
    )
    return message, before


def _unreadable(payload: object, fallback_template: object) -> str | None:
    if (problem := reason(payload)) is not None:
        return f"payload: {problem}"
    if (problem := reason(fallback_template)) is not None:
        return f"fallback_template: {problem}"
    return None
