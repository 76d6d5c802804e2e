"""Turns stored webhook rows into delivery states and last-inbound times, in short transactions.

A batch takes unprocessed webhook rows with SKIP LOCKED (so any number of replicas can share the
work, whoever inserted the rows), parses them, locks the outbox rows their statuses name, lets
`outbox.domain.reconcile` decide, and writes everything with one statement per table before it
commits. Statuses whose row is unknown are parked and tried again until a horizon.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger, Boolean, DateTime, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.sql import WAKE_SENDERS
from outbox.domain.delivery import Delivery
from outbox.domain.models import SentAs, State
from outbox.domain.notifications import (
    ErrorNotice,
    Ignored,
    Inbound,
    NumberChanged,
    StatusUpdate,
    parse_notification,
)
from outbox.domain.reconcile import Located, Plan, Target, plan_statuses

_TIMESTAMP = DateTime(timezone=True)

_TAKE = """
    SELECT id, channel, payload::text AS payload FROM outbox.webhook_events
    WHERE processed_at IS NULL {only}
    ORDER BY id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
"""
_TAKE_WEBHOOKS = text(_TAKE.format(only=""))
_TAKE_ONE_WEBHOOK = text(_TAKE.format(only="AND id = :id"))

_DONE = ArrayColumns((("id", BigInteger()), ("error", Text())))
_DONE_WEBHOOKS = _DONE.statement(
    f"""
    UPDATE outbox.webhook_events AS w
    SET processed_at = now(), error = d.error, attempts = w.attempts + 1
    FROM {_DONE.unnest("d")}
    WHERE w.id = d.id
    """
)

# A notification cannot come from the future: a sender clock ahead of ours must not hold a
# window open past its real end.
_INBOUND_COLUMNS = ArrayColumns((("channel", Text()), ("wa_id", Text()), ("at", _TIMESTAMP)))
_INBOUND = _INBOUND_COLUMNS.statement(
    f"""
    INSERT INTO outbox.contacts AS c (channel, wa_id, last_inbound_at)
    SELECT channel, wa_id, least(max(at), now())
    FROM {_INBOUND_COLUMNS.unnest("i")}
    GROUP BY channel, wa_id
    ORDER BY channel, wa_id
    ON CONFLICT (channel, wa_id) DO UPDATE
    SET last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
        updated_at = now()
    """
)

# The window a user had on the old number carries over; the notice itself opens nothing.
_MOVES = ArrayColumns((("channel", Text()), ("old_wa_id", Text()), ("new_wa_id", Text())))
_NUMBER_CHANGED = _MOVES.statement(
    f"""
    INSERT INTO outbox.contacts AS c (channel, wa_id, last_inbound_at)
    SELECT o.channel, n.new_wa_id, max(o.last_inbound_at)
    FROM {_MOVES.unnest("n")}
    JOIN outbox.contacts AS o ON o.channel = n.channel AND o.wa_id = n.old_wa_id
    WHERE o.last_inbound_at IS NOT NULL
    GROUP BY o.channel, n.new_wa_id
    ORDER BY o.channel, n.new_wa_id
    ON CONFLICT (channel, wa_id) DO UPDATE
    SET last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
        updated_at = now()
    """
)

# Locked in id order, so two reconcilers touching the same rows cannot deadlock each other.
_TARGETS = text(
    """
    SELECT id, channel, wamid, state, sent_as, fallback_template IS NOT NULL AS has_fallback,
           accepted_at, sent_at, delivered_at, read_at, failed_at,
           error_code, error_title, error_detail
    FROM outbox.messages
    WHERE wamid = ANY(:wamids) OR id = ANY(:ids)
    ORDER BY id
    FOR UPDATE
    """
).bindparams(bindparam("wamids", type_=ARRAY(Text())), bindparam("ids", type_=ARRAY(BigInteger())))

_CHANGES = ArrayColumns(
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

_CHANGE_ROWS = _CHANGES.statement(
    f"""
    UPDATE outbox.messages AS m SET
        state = c.state, sent_at = c.sent_at, delivered_at = c.delivered_at,
        read_at = c.read_at, failed_at = c.failed_at, error_code = c.error_code,
        error_title = c.error_title, error_detail = c.error_detail, wamid = c.wamid,
        sent_as = c.sent_as,
        next_attempt_at = CASE WHEN c.requeue THEN NULL ELSE m.next_attempt_at END,
        updated_at = now()
    FROM {_CHANGES.unnest("c")}
    WHERE m.id = c.id
    """
)

_HISTORY_COLUMNS = ArrayColumns(
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

_HISTORY = _HISTORY_COLUMNS.statement(
    f"""
    INSERT INTO outbox.status_history ({_HISTORY_COLUMNS.names})
    SELECT * FROM {_HISTORY_COLUMNS.unnest("h")}
    ON CONFLICT DO NOTHING
    """
)

_PARKED = ArrayColumns(
    (("channel", Text()), ("status", JSONB()), ("webhook_event_id", BigInteger()))
)
_PARK = _PARKED.statement(
    f"""
    INSERT INTO outbox.parked_statuses (channel, status, webhook_event_id, next_attempt_at)
    SELECT channel, status, webhook_event_id, now() + interval '1 second'
    FROM {_PARKED.unnest("p")}
    """
)

_TAKE_PARKED = text(
    """
    SELECT id, channel, status, webhook_event_id FROM outbox.parked_statuses
    WHERE orphaned_at IS NULL AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
).columns(status=JSONB)

_ORPHAN_NOW = text(
    "UPDATE outbox.parked_statuses SET orphaned_at = now() WHERE id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

_RESOLVED = text("DELETE FROM outbox.parked_statuses WHERE id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger()))
)

# Tried again after 1, 2, 4 ... 30 seconds; past the horizon a status is an orphan for good.
_STILL_PARKED = text(
    """
    UPDATE outbox.parked_statuses
    SET attempts = attempts + 1,
        next_attempt_at = now() + make_interval(secs => least(30, 2 ^ attempts)),
        orphaned_at = CASE WHEN parked_at < now() - make_interval(secs => :horizon_seconds)
                           THEN now() END
    WHERE id = ANY(:ids)
    RETURNING channel, orphaned_at IS NOT NULL AS orphaned
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))


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

    def add(self, other: Report) -> None:
        self.webhooks += other.webhooks
        self.inbound += other.inbound
        self.verdicts.update(other.verdicts)
        self.notes.update(other.notes)
        self.orphaned.update(other.orphaned)
        self.failed_rows += other.failed_rows
        self.delivered_after += other.delivered_after
        self.failed += other.failed


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    channel: str
    message_id: int
    wamid: str | None
    error_code: str | None
    error_title: str | None


class ReconcileStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def process_webhooks(self, limit: int) -> Report:
        """Process up to `limit` stored webhook rows in one transaction."""
        async with self._engine.begin() as connection:
            rows = (await connection.execute(_TAKE_WEBHOOKS, {"limit": limit})).all()
            return await self._process(connection, [(r.id, r.channel, r.payload) for r in rows])

    async def process_webhook_alone(self, webhook_id: int) -> Report:
        """One row in its own transaction, to find the one a failed batch choked on."""
        async with self._engine.begin() as connection:
            params = {"id": webhook_id, "limit": 1}
            rows = (await connection.execute(_TAKE_ONE_WEBHOOK, params)).all()
            return await self._process(connection, [(r.id, r.channel, r.payload) for r in rows])

    async def pending_webhook_ids(self, limit: int) -> list[int]:
        async with self._engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT id FROM outbox.webhook_events WHERE processed_at IS NULL"
                    " ORDER BY id LIMIT :limit"
                ),
                {"limit": limit},
            )
            return list(result.scalars())

    async def give_up_webhook(self, webhook_id: int, error: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(_DONE_WEBHOOKS, _DONE.params([(webhook_id, error)]))

    async def retry_parked(self, limit: int, horizon: timedelta) -> Report:
        """Try parked statuses again; those past `horizon` become orphans."""
        report = Report()
        async with self._engine.begin() as connection:
            rows = (await connection.execute(_TAKE_PARKED, {"limit": limit})).all()
            if not rows:
                return report
            statuses = [
                Located(r.channel, _status_from_json(r.status), r.webhook_event_id, r.id)
                for r in rows
            ]
            plan = await _apply(connection, statuses, report)
            if plan.resolved:
                await connection.execute(_RESOLVED, {"ids": plan.resolved})
            still = [p.parked_id for p in plan.park if p.parked_id is not None]
            if still:
                result = await connection.execute(
                    _STILL_PARKED, {"ids": still, "horizon_seconds": horizon.total_seconds()}
                )
                for row in result:
                    if row.orphaned:
                        report.orphaned[row.channel] += 1
        return report

    async def orphan_due_parked(self, limit: int) -> int:
        """Give up on the next due parked statuses at once (they made a batch fail)."""
        async with self._engine.begin() as connection:
            ids = [r.id for r in (await connection.execute(_TAKE_PARKED, {"limit": limit}))]
            if ids:
                await connection.execute(_ORPHAN_NOW, {"ids": ids})
        return len(ids)

    async def _process(
        self, connection: AsyncConnection, rows: Sequence[tuple[int, str, str]]
    ) -> Report:
        report = Report(webhooks=len(rows))
        inbound: list[tuple[str, str, datetime]] = []
        moves: list[tuple[str, str, str]] = []
        statuses: list[Located] = []
        errors: list[str | None] = []
        for webhook_id, channel, payload in rows:
            notes: list[str] = []
            for event in parse_notification(orjson.loads(payload)):
                if isinstance(event, Inbound):
                    inbound.append((channel, event.wa_id, event.at))
                elif isinstance(event, StatusUpdate):
                    statuses.append(Located(channel, event, webhook_id))
                elif isinstance(event, NumberChanged):
                    moves.append((channel, event.old_wa_id, event.new_wa_id))
                    notes.append(f"number changed to {event.new_wa_id}")
                elif isinstance(event, ErrorNotice):
                    notes.append(f"error {event.code}: {event.title}")
                    report.notes[(channel, "error")] += 1
                elif isinstance(event, Ignored):
                    notes.append(f"ignored: {event.reason}")
                    report.notes[(channel, "ignored")] += 1
            errors.append("; ".join(notes) or None)
        if inbound:
            await connection.execute(_INBOUND, _INBOUND_COLUMNS.params(inbound))
            report.inbound = len(inbound)
        if moves:
            await connection.execute(_NUMBER_CHANGED, _MOVES.params(moves))
        if statuses:
            plan = await _apply(connection, statuses, report)
            if plan.park:
                parked = [
                    (p.channel, _status_to_json(p.update), p.webhook_event_id) for p in plan.park
                ]
                await connection.execute(_PARK, _PARKED.params(parked))
        if rows:
            await connection.execute(
                _DONE_WEBHOOKS, _DONE.params([(r[0], e) for r, e in zip(rows, errors, strict=True)])
            )
        return report


async def _apply(connection: AsyncConnection, statuses: list[Located], report: Report) -> Plan:
    """Lock the rows `statuses` name, plan, and write row changes and history."""
    wamids = sorted({s.update.wamid for s in statuses})
    ids = sorted({s.update.outbox_id for s in statuses if s.update.outbox_id is not None})
    rows = (await connection.execute(_TARGETS, {"wamids": wamids, "ids": ids})).all()
    targets = [
        Target(
            id=r.id,
            channel=r.channel,
            wamid=r.wamid,
            sent_as=SentAs(r.sent_as) if r.sent_as else None,
            has_fallback=r.has_fallback,
            delivery=Delivery(
                State(r.state),
                r.sent_at,
                r.delivered_at,
                r.read_at,
                r.failed_at,
                r.error_code,
                r.error_title,
                r.error_detail,
            ),
        )
        for r in rows
    ]
    plan = plan_statuses(statuses, targets, datetime.now(UTC))
    report.verdicts.update(plan.verdicts)
    before = {r.id: r for r in rows}
    for message_id, change in plan.changes.items():
        delivery, row = change.delivery, before[message_id]
        if delivery.state is State.FAILED and row.state != State.FAILED.value:
            report.failed.append(
                FailedDelivery(
                    row.channel, message_id, change.wamid, delivery.error_code, delivery.error_title
                )
            )
        if delivery.delivered_at is not None and row.delivered_at is None and row.accepted_at:
            seconds = max(0.0, (delivery.delivered_at - row.accepted_at).total_seconds())
            report.delivered_after.append((row.channel, seconds))
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
        await connection.execute(_CHANGE_ROWS, _CHANGES.params(changes))
        if any(c.requeue for c in plan.changes.values()):
            await connection.execute(WAKE_SENDERS)
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
        await connection.execute(_HISTORY, _HISTORY_COLUMNS.params(history))
    return plan


def _status_to_json(update: StatusUpdate) -> dict[str, Any]:
    return {
        "wamid": update.wamid,
        "status": update.status,
        "at": update.at.isoformat() if update.at else None,
        "recipient": update.recipient,
        "outbox_id": update.outbox_id,
        "error_code": update.error_code,
        "error_title": update.error_title,
        "error_detail": update.error_detail,
    }


def _status_from_json(data: dict[str, Any]) -> StatusUpdate:
    at = data.get("at")
    return StatusUpdate(
        wamid=data["wamid"],
        status=data["status"],
        at=datetime.fromisoformat(at) if at else None,
        recipient=data.get("recipient"),
        outbox_id=data.get("outbox_id"),
        error_code=data.get("error_code"),
        error_title=data.get("error_title"),
        error_detail=data.get("error_detail"),
    )
