"""The reconciler's unit of work over `webhook_events`, `contacts` and `parked_statuses`.

A batch takes unprocessed webhook rows with SKIP LOCKED (so any number of replicas can share the
work, whoever inserted the rows) and holds them in one transaction while the reconciler
(`outbox.services.reconciler`) locks the outbox rows their statuses name and writes everything
with one statement per table (`outbox.db.status_writes`); it commits when the batch is left.
Statuses whose row is unknown are parked and tried again until a horizon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Text

from outbox.db.account_store import apply_account_plan
from outbox.db.arrays import ArrayColumns
from outbox.db.errors import translated, translated_errors
from outbox.db.identities import (
    ADDRESSED_COLUMNS,
    INHERIT_PAIRS,
    LEARN_PAIRS,
    MOVE_COLUMNS,
    PAIR_BY_MESSAGE,
    PAIR_COLUMNS,
)
from outbox.db.status_writes import StatusWriter
from outbox.domain.account_plan import AccountPlan
from outbox.domain.digest import InboundSeen, Located, NumberMove, WebhookRow
from outbox.domain.parked import status_from_json, status_to_json
from outbox.domain.user_ids import Identities

_TIMESTAMP = DateTime(timezone=True)

# Rows in id order until the byte budget is spent: memory grows with a body's statuses, not
# with the number of rows, so a batch is bounded by the bodies' sizes as received. The first row
# is always taken, so a body larger than the budget goes alone. The rows past the budget stay
# locked until the batch commits (other replicas take the rows after them) and come next.
_TAKE = """
    WITH taken AS (
        SELECT id, coalesce(body_bytes, octet_length(payload::text)) AS size
        FROM outbox.webhook_events
        WHERE processed_at IS NULL {only}
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), budgeted AS (
        SELECT id, sum(size) OVER (ORDER BY id) - size AS before FROM taken
    )
    SELECT w.id, w.channel, w.payload::text AS payload, w.authenticated
    FROM outbox.webhook_events AS w JOIN budgeted AS b ON b.id = w.id
    WHERE b.before < :budget
    ORDER BY w.id
"""
TAKE_WEBHOOKS = text(_TAKE.format(only=""))
TAKE_WEBHOOK = text(_TAKE.format(only="AND id = :id"))

FINISHED_WEBHOOK_COLUMNS = ArrayColumns((("id", BigInteger()), ("error", Text())))
FINISH_WEBHOOKS = FINISHED_WEBHOOK_COLUMNS.statement(
    f"""
    UPDATE outbox.webhook_events AS w
    SET processed_at = now(), error = d.error, attempts = w.attempts + 1
    FROM {FINISHED_WEBHOOK_COLUMNS.unnest("d")}
    WHERE w.id = d.id
    """
)

# A notification cannot come from the future: a sender clock ahead of ours must not hold a
# window open past its real end.
INBOUND_COLUMNS = ArrayColumns((("channel", Text()), ("wa_id", Text()), ("at", _TIMESTAMP)))
RECORD_INBOUND = INBOUND_COLUMNS.statement(
    f"""
    INSERT INTO outbox.contacts AS c (channel, wa_id, last_inbound_at)
    SELECT channel, wa_id, least(max(at), now())
    FROM {INBOUND_COLUMNS.unnest("i")}
    GROUP BY channel, wa_id
    ORDER BY channel, wa_id
    ON CONFLICT (channel, wa_id) DO UPDATE
    SET last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
        updated_at = now()
    """
)

# The window a user had on the old number carries over; the notice itself opens nothing.
NUMBER_CHANGE_COLUMNS = ArrayColumns(
    (("channel", Text()), ("old_wa_id", Text()), ("new_wa_id", Text()))
)
CARRY_OVER_WINDOWS = NUMBER_CHANGE_COLUMNS.statement(
    f"""
    INSERT INTO outbox.contacts AS c (channel, wa_id, last_inbound_at)
    SELECT o.channel, n.new_wa_id, max(o.last_inbound_at)
    FROM {NUMBER_CHANGE_COLUMNS.unnest("n")}
    JOIN outbox.contacts AS o ON o.channel = n.channel AND o.wa_id = n.old_wa_id
    WHERE o.last_inbound_at IS NOT NULL
    GROUP BY o.channel, n.new_wa_id
    ORDER BY o.channel, n.new_wa_id
    ON CONFLICT (channel, wa_id) DO UPDATE
    SET last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
        updated_at = now()
    """
)

PARKED_COLUMNS = ArrayColumns(
    (("channel", Text()), ("status", JSONB()), ("webhook_event_id", BigInteger()))
)
PARK_STATUSES = PARKED_COLUMNS.statement(
    f"""
    INSERT INTO outbox.parked_statuses (channel, status, webhook_event_id, next_attempt_at)
    SELECT channel, status, webhook_event_id, now() + interval '1 second'
    FROM {PARKED_COLUMNS.unnest("p")}
    """
)

# A parked status keeps the origin of its webhook row; one whose row is gone (purged) counts as
# unauthenticated, so it can still find its row by wamid but never by the outbox id.
TAKE_PARKED = text(
    """
    SELECT p.id, p.channel, p.status, p.webhook_event_id,
           coalesce(w.authenticated, false) AS authenticated
    FROM outbox.parked_statuses AS p
    LEFT JOIN outbox.webhook_events AS w ON w.id = p.webhook_event_id
    WHERE p.orphaned_at IS NULL AND p.next_attempt_at <= now()
    ORDER BY p.next_attempt_at
    LIMIT :limit
    FOR UPDATE OF p SKIP LOCKED
    """
).columns(status=JSONB)

ORPHAN_PARKED = text(
    "UPDATE outbox.parked_statuses SET orphaned_at = now() WHERE id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

DELETE_PARKED = text("DELETE FROM outbox.parked_statuses WHERE id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger()))
)

# Tried again after 1, 2, 4 ... 30 seconds; past the horizon a status is an orphan for good.
POSTPONE_PARKED = text(
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

PENDING_WEBHOOKS = text(
    "SELECT id FROM outbox.webhook_events WHERE processed_at IS NULL ORDER BY id LIMIT :limit"
)


class ReconcileStore:
    def __init__(self, engine: AsyncEngine, scopes: Mapping[str, str] | None = None) -> None:
        self._engine = engine
        # Issue 18: each channel's template registry scope (its WABA), for pricing checks.
        self._scopes = dict(scopes or {})

    def set_scopes(self, scopes: Mapping[str, str]) -> None:
        """The channels changed (the registry): batches from now on use these scopes."""
        self._scopes = dict(scopes)

    def webhooks(self, limit: int, budget: int) -> AbstractAsyncContextManager[_WebhookBatch]:
        """Up to `limit` unprocessed webhook rows, locked, in one transaction, as long as the
        bodies before each one hold fewer than `budget` bytes."""
        return self._webhooks(TAKE_WEBHOOKS, {"limit": limit, "budget": budget})

    def webhook(self, webhook_id: int) -> AbstractAsyncContextManager[_WebhookBatch]:
        return self._webhooks(TAKE_WEBHOOK, {"id": webhook_id, "limit": 1, "budget": 1})

    @asynccontextmanager
    async def _webhooks(
        self, take: TextClause, params: dict[str, int]
    ) -> AsyncIterator[_WebhookBatch]:
        with translated_errors():
            async with self._engine.begin() as connection:
                rows = (await connection.execute(take, params)).all()
                yield _WebhookBatch(connection, [_webhook_row(r) for r in rows], self._scopes)

    @asynccontextmanager
    async def parked(self, limit: int) -> AsyncIterator[_ParkedBatch]:
        """Up to `limit` due parked statuses, locked, in one transaction."""
        with translated_errors():
            async with self._engine.begin() as connection:
                rows = (await connection.execute(TAKE_PARKED, {"limit": limit})).all()
                statuses = [
                    Located(
                        r.channel,
                        status_from_json(r.status),
                        r.webhook_event_id,
                        r.id,
                        authenticated=r.authenticated,
                    )
                    for r in rows
                ]
                yield _ParkedBatch(connection, statuses, self._scopes)

    @translated
    async def pending_webhook_ids(self, limit: int) -> list[int]:
        async with self._engine.connect() as connection:
            return list((await connection.execute(PENDING_WEBHOOKS, {"limit": limit})).scalars())

    @translated
    async def give_up_webhook(self, webhook_id: int, error: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                FINISH_WEBHOOKS, FINISHED_WEBHOOK_COLUMNS.params([(webhook_id, error)])
            )

    @translated
    async def orphan_due_parked(self, limit: int) -> int:
        """Give up on the next due parked statuses at once (they made a batch fail)."""
        async with self._engine.begin() as connection:
            ids = [r.id for r in (await connection.execute(TAKE_PARKED, {"limit": limit}))]
            if ids:
                await connection.execute(ORPHAN_PARKED, {"ids": ids})
        return len(ids)


class _WebhookBatch(StatusWriter):
    def __init__(
        self, connection: AsyncConnection, rows: list[WebhookRow], scopes: Mapping[str, str]
    ) -> None:
        super().__init__(connection, scopes)
        self.rows = rows

    @translated
    async def record(self, inbound: Sequence[InboundSeen], moves: Sequence[NumberMove]) -> None:
        if inbound:
            seen = [(i.channel, i.wa_id, i.at) for i in inbound]
            await self._connection.execute(RECORD_INBOUND, INBOUND_COLUMNS.params(seen))
        if moves:
            changed = [(m.channel, m.old_wa_id, m.new_wa_id) for m in moves]
            await self._connection.execute(
                CARRY_OVER_WINDOWS, NUMBER_CHANGE_COLUMNS.params(changed)
            )

    @translated
    async def learn(self, identities: Identities) -> None:
        if identities.pairs:
            learned = [(p.channel, p.wa_id, p.bsuid, p.source) for p in identities.pairs]
            await self._connection.execute(LEARN_PAIRS, PAIR_COLUMNS.params(learned))
        if identities.moves:
            await self._connection.execute(INHERIT_PAIRS, MOVE_COLUMNS.params(identities.moves))
            # The window moves with the id, as with a new number.
            params = NUMBER_CHANGE_COLUMNS.params(identities.moves)
            await self._connection.execute(CARRY_OVER_WINDOWS, params)
        if identities.addressed:
            params = ADDRESSED_COLUMNS.params(identities.addressed)
            await self._connection.execute(PAIR_BY_MESSAGE, params)

    @translated
    async def record_account(self, plan: AccountPlan) -> None:
        await apply_account_plan(self._connection, plan)

    @translated
    async def park(self, statuses: Sequence[Located]) -> None:
        parked = [(s.channel, status_to_json(s.update), s.webhook_event_id) for s in statuses]
        await self._connection.execute(PARK_STATUSES, PARKED_COLUMNS.params(parked))

    @translated
    async def done(self, notes: Sequence[tuple[int, str | None]]) -> None:
        await self._connection.execute(FINISH_WEBHOOKS, FINISHED_WEBHOOK_COLUMNS.params(notes))


class _ParkedBatch(StatusWriter):
    def __init__(
        self, connection: AsyncConnection, statuses: list[Located], scopes: Mapping[str, str]
    ) -> None:
        super().__init__(connection, scopes)
        self.statuses = statuses

    @translated
    async def resolve(self, parked_ids: Sequence[int]) -> None:
        await self._connection.execute(DELETE_PARKED, {"ids": list(parked_ids)})

    @translated
    async def postpone(self, parked_ids: Sequence[int], horizon: timedelta) -> list[str]:
        params = {"ids": list(parked_ids), "horizon_seconds": horizon.total_seconds()}
        result = await self._connection.execute(POSTPONE_PARKED, params)
        return [r.channel for r in result if r.orphaned]


def _webhook_row(row: Row[Any]) -> WebhookRow:
    return WebhookRow(row.id, row.channel, orjson.loads(row.payload), row.authenticated)
