"""Statuses onto `outbox.messages` and `outbox.status_history`: lock the rows, write the plan.

Shared by both kinds of reconcile batch (webhook rows, and parked statuses tried again), inside
their transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Boolean, DateTime, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.errors import translated
from outbox.db.sql import WAKE_SENDERS
from outbox.db.status_policy import hold_for_templates, record_opt_outs, write_pricing
from outbox.db.tuples import as_tuples
from outbox.domain.delivery import Delivery
from outbox.domain.digest import Located
from outbox.domain.models import SentAs, State
from outbox.domain.pricing import Priced
from outbox.domain.reconcile import Plan, Target

_TIMESTAMP = DateTime(timezone=True)

# Locked in id order, so two reconcilers touching the same rows cannot deadlock each other. A
# status may name a row by its current wamid, an earlier send's (outbox.message_sends) or the
# outbox id; each is one index probe. A row the lookup misses (its history written after this
# statement's snapshot) is found when its parked status comes back.
LOCK_TARGETS = text(
    """
    WITH named AS (
        SELECT id FROM outbox.messages WHERE wamid = ANY(:wamids)
        UNION SELECT message_id FROM outbox.message_sends WHERE wamid = ANY(:wamids)
        UNION SELECT unnest(CAST(:ids AS bigint[]))
    )
    SELECT id, channel, wamid, state, sent_as, fallback_template IS NOT NULL AS has_fallback,
           accepted_at, sent_at, delivered_at, read_at, failed_at,
           error_code, error_title, error_detail
    FROM outbox.messages
    WHERE id IN (SELECT id FROM named)
    ORDER BY id
    FOR UPDATE
    """
).bindparams(bindparam("wamids", type_=ARRAY(Text())), bindparam("ids", type_=ARRAY(BigInteger())))

# Read after the lock, in a statement of its own: with the rows locked nobody can add to their
# history, and this statement's snapshot sees what a send that committed meanwhile added.
EARLIER_SENDS = text(
    "SELECT message_id, wamid FROM outbox.message_sends WHERE message_id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

ENDED_COLUMNS = ArrayColumns(
    (
        ("message_id", BigInteger()),
        ("wamid", Text()),
        ("sent_as", Text()),
        ("accepted_at", _TIMESTAMP),
    )
)
RECORD_ENDED = ENDED_COLUMNS.statement(
    f"""
    INSERT INTO outbox.message_sends ({ENDED_COLUMNS.names})
    SELECT * FROM {ENDED_COLUMNS.unnest("e")}
    ON CONFLICT DO NOTHING
    """
)

ROW_CHANGE_COLUMNS = ArrayColumns(
    (
        ("id", BigInteger()),
        ("state", Text()),
        ("sent_at", _TIMESTAMP),
        ("delivered_at", _TIMESTAMP),
        ("read_at", _TIMESTAMP),
        ("failed_at", _TIMESTAMP),
        ("error_code", Text()),
        ("error_title", Text()),
        ("error_detail", Text()),
        ("wamid", Text()),
        ("sent_as", Text()),
        ("requeue", Boolean()),
    )
)

CHANGE_MESSAGES = ROW_CHANGE_COLUMNS.statement(
    f"""
    UPDATE outbox.messages AS m SET
        state = c.state, sent_at = c.sent_at, delivered_at = c.delivered_at,
        read_at = c.read_at, failed_at = c.failed_at, error_code = c.error_code,
        error_title = c.error_title, error_detail = c.error_detail, wamid = c.wamid,
        sent_as = c.sent_as,
        next_attempt_at = CASE WHEN c.requeue THEN NULL ELSE m.next_attempt_at END,
        updated_at = now()
    FROM {ROW_CHANGE_COLUMNS.unnest("c")}
    WHERE m.id = c.id
    """
)

HISTORY_COLUMNS = ArrayColumns(
    (
        ("message_id", BigInteger()),
        ("wamid", Text()),
        ("status", Text()),
        ("at", _TIMESTAMP),
        ("verdict", Text()),
        ("error_code", Text()),
        ("error_title", Text()),
        ("error_detail", Text()),
        ("webhook_event_id", BigInteger()),
    )
)

INSERT_HISTORY = HISTORY_COLUMNS.statement(
    f"""
    INSERT INTO outbox.status_history ({HISTORY_COLUMNS.names})
    SELECT * FROM {HISTORY_COLUMNS.unnest("h")}
    ON CONFLICT DO NOTHING
    """
)


class TargetRow(NamedTuple):
    """A row of LOCK_TARGETS (`outbox.db.tuples`: read once per status, at C speed)."""

    id: int
    channel: str
    wamid: str | None
    state: str
    sent_as: str | None
    has_fallback: bool
    accepted_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    error_code: str | None
    error_title: str | None
    error_detail: str | None


class StatusWriter:
    """Statuses onto the rows they name, inside a batch's transaction."""

    def __init__(
        self, connection: AsyncConnection, scopes: Mapping[str, str] | None = None
    ) -> None:
        self._connection = connection
        self._scopes = scopes or {}  # channel -> its templates' registry scope (issue 18)

    @translated
    async def lock(self, statuses: Sequence[Located]) -> list[Target]:
        wamids = sorted({s.update.wamid for s in statuses})
        ids = sorted({s.update.outbox_id for s in statuses if s.update.outbox_id is not None})
        params = {"wamids": wamids, "ids": ids}
        result = await self._connection.execute(LOCK_TARGETS, params)
        rows = as_tuples(result, TargetRow._make, TargetRow._fields)
        earlier: dict[int, set[str]] = defaultdict(set)
        if rows:
            sends = await self._connection.execute(EARLIER_SENDS, {"ids": [r.id for r in rows]})
            for send in sends:
                earlier[send.message_id].add(send.wamid)
        return [_target(r, frozenset(earlier[r.id])) for r in rows]

    @translated
    async def apply(self, plan: Plan) -> list[Priced]:
        if plan.ended:
            # Recorded here with what they went out as: the requeue changes `sent_as`.
            ended = [
                (e.message_id, e.wamid, e.sent_as.value if e.sent_as else None, e.accepted_at)
                for e in plan.ended
            ]
            await self._connection.execute(RECORD_ENDED, ENDED_COLUMNS.params(ended))
        if plan.changes:
            changes = [
                (
                    message_id,
                    c.delivery.state.value,
                    c.delivery.sent_at,
                    c.delivery.delivered_at,
                    c.delivery.read_at,
                    c.delivery.failed_at,
                    c.delivery.error_code,
                    c.delivery.error_title,
                    c.delivery.error_detail,
                    c.wamid,
                    c.sent_as.value if c.sent_as else None,
                    c.requeue,
                )
                for message_id, c in plan.changes.items()
            ]
            await self._connection.execute(CHANGE_MESSAGES, ROW_CHANGE_COLUMNS.params(changes))
            held = [message_id for message_id, c in plan.changes.items() if c.hold]
            if held:
                await hold_for_templates(self._connection, held, self._scopes)
            if any(c.requeue for c in plan.changes.values()):
                await self._connection.execute(WAKE_SENDERS)
        if plan.history:
            history = [
                (
                    h.message_id,
                    h.wamid,
                    h.status,
                    h.at,
                    h.verdict,
                    h.error_code,
                    h.error_title,
                    h.error_detail,
                    h.webhook_event_id,
                )
                for h in plan.history
            ]
            await self._connection.execute(INSERT_HISTORY, HISTORY_COLUMNS.params(history))
        if plan.opt_outs:
            await record_opt_outs(self._connection, plan.opt_outs)
        if plan.pricing:
            return await write_pricing(self._connection, plan.pricing, self._scopes)
        return []


def _target(row: TargetRow, earlier: frozenset[str]) -> Target:
    return Target(
        id=row.id,
        channel=row.channel,
        wamid=row.wamid,
        sent_as=SentAs(row.sent_as) if row.sent_as else None,
        has_fallback=row.has_fallback,
        delivery=Delivery(
            State(row.state),
            row.sent_at,
            row.delivered_at,
            row.read_at,
            row.failed_at,
            row.error_code,
            row.error_title,
            row.error_detail,
        ),
        accepted_at=row.accepted_at,
        earlier=earlier,
    )
