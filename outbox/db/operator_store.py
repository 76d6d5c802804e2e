"""The operator's writes (`outbox replay`, `cancel`, `purge`): batched, short, and re-checked.

Rows are selected once and decided in outbox.domain.replay; every write statement checks the
same conditions again, so a row that changed meanwhile (a late status, a sender's claim) is
left alone rather than overwritten. Each batch is its own short transaction with a lock
timeout, so an operator's command never holds up the daemon for long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import BigInteger, Text

from outbox.db.sql import WAKE_SENDERS
from outbox.db.tables import WA_ID
from outbox.domain.models import State
from outbox.domain.replay import Candidate

_PAGE = 1000
_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '5s'")

# The furthest delivery status the row itself or its history records, as a rank 1..3.
_REACHED = """
    CASE greatest(
        CASE WHEN m.read_at IS NOT NULL THEN 3 WHEN m.delivered_at IS NOT NULL THEN 2
             WHEN m.sent_at IS NOT NULL THEN 1 ELSE 0 END,
        coalesce((SELECT max(array_position(ARRAY['sent', 'delivered', 'read'], h.status))
                  FROM outbox.status_history AS h WHERE h.message_id = m.id), 0))
    WHEN 3 THEN 'read' WHEN 2 THEN 'delivered' WHEN 1 THEN 'sent' END
"""


@dataclass(frozen=True)
class Selector:
    """Which rows an operator's command applies to; every given part must match."""

    states: tuple[State, ...]
    ids: tuple[int, ...] = ()
    channel: str | None = None
    error_codes: tuple[str, ...] = ()
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    recipient: str | None = None

    def narrows(self) -> bool:
        """True when something beyond the state was given."""
        return bool(
            self.ids
            or self.channel
            or self.error_codes
            or self.since
            or self.until
            or self.recipient
        )

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["m.state = ANY(CAST(:states AS text[]))"]
        params: dict[str, Any] = {"states": [s.value for s in self.states]}
        if self.ids:
            clauses.append("m.id = ANY(CAST(:ids AS bigint[]))")
            params["ids"] = list(self.ids)
        if self.channel is not None:
            clauses.append("m.channel = :channel")
            params["channel"] = self.channel
        if self.error_codes:
            clauses.append("m.error_code = ANY(CAST(:error_codes AS text[]))")
            params["error_codes"] = list(self.error_codes)
        if self.since is not None:
            clauses.append("m.created_at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("m.created_at < :until")
            params["until"] = self.until
        if self.recipient is not None:
            # The same normalisation as the generated wa_id column, so '+49 151…' finds it.
            clauses.append(f"m.wa_id = {WA_ID.replace('recipient', 'CAST(:recipient AS text)')}")
            params["recipient"] = self.recipient
        return " AND ".join(clauses), params


_TARGET = """
    SELECT m.id, m.state, m.attempts, m.wamid, m.error_code, m.error_title
    FROM outbox.messages AS m
    WHERE m.id = ANY(:ids) AND m.state = ANY(:states) AND {condition}
    ORDER BY m.id
    FOR UPDATE
"""

_ACTION = """
    INSERT INTO outbox.operator_actions
        (message_id, action, actor, forced, from_state, attempts, wamid, error_code,
         error_title, note)
    SELECT t.id, '{action}', :actor, :forced, t.state, t.attempts, t.wamid, t.error_code,
           t.error_title, :note
    FROM target AS t JOIN done USING (id)
    RETURNING message_id
"""

# Back to the queue as new: attempts, errors and delivery times cleared (the old ones stay in
# operator_actions and status_history), content re-decided by the window rule at send time,
# and into the replay lane.
# A replay re-checks what the decision checked: no delivery on record (unless forced) and an
# expiry, old or new, still ahead.
_REPLAYABLE = f"""
    (:forced OR ({_REACHED}) IS NULL)
    AND (coalesce(CAST(:expires_at AS timestamptz), m.expires_at) IS NULL
         OR coalesce(CAST(:expires_at AS timestamptz), m.expires_at) > now())
"""

# Back to the queue as new: attempts, errors and delivery times cleared (the old ones stay in
# operator_actions and status_history), content re-decided by the window rule at send time,
# and into the replay lane.
_REPLAY = text(
    f"""
    WITH target AS ({_TARGET.format(condition=_REPLAYABLE)}), done AS (
        UPDATE outbox.messages AS m
        SET state = 'queued', attempts = 0, next_attempt_at = NULL, sent_as = NULL,
            error_code = NULL, error_title = NULL, error_detail = NULL,
            accepted_at = NULL, sent_at = NULL, delivered_at = NULL, read_at = NULL,
            failed_at = NULL, claimed_by = NULL, lease_until = NULL, unknown_resends = 0,
            expires_at = coalesce(CAST(:expires_at AS timestamptz), m.expires_at),
            replayed_at = now(), replays = m.replays + 1, updated_at = now()
        FROM target AS t WHERE m.id = t.id
        RETURNING m.id
    )
    {_ACTION.format(action="replay")}
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())), bindparam("states", type_=ARRAY(Text())))

_CANCEL = text(
    f"""
    WITH target AS ({_TARGET.format(condition="TRUE")}), done AS (
        UPDATE outbox.messages AS m
        SET state = 'cancelled', next_attempt_at = NULL, error_code = 'cancelled',
            error_title = 'cancelled by an operator', error_detail = :note, updated_at = now()
        FROM target AS t WHERE m.id = t.id
        RETURNING m.id
    )
    {_ACTION.format(action="cancel")}
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())), bindparam("states", type_=ARRAY(Text())))

# Keyset batches in id order: each row is read once over the whole purge, however many
# batches it takes; a row someone holds is skipped, not waited for.
_PURGE_MESSAGES = text(
    """
    WITH doomed AS (
        SELECT id FROM outbox.messages
        WHERE id > :after AND state = ANY(:states) AND updated_at < :cutoff
        ORDER BY id LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), history AS (
        DELETE FROM outbox.status_history WHERE message_id IN (SELECT id FROM doomed)
    ), actions AS (
        DELETE FROM outbox.operator_actions WHERE message_id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM outbox.messages AS m USING doomed WHERE m.id = doomed.id RETURNING m.id
    )
    SELECT count(*) AS n, max(id) AS last FROM gone
    """
).bindparams(bindparam("states", type_=ARRAY(Text())))


def _purge_rows(table: str, condition: str) -> TextClause:
    return text(
        f"""
        WITH gone AS (
            DELETE FROM outbox.{table} WHERE id IN (
                SELECT id FROM outbox.{table}
                WHERE id > :after AND {condition}
                ORDER BY id LIMIT :batch
                FOR UPDATE SKIP LOCKED)
            RETURNING id
        )
        SELECT count(*) AS n, max(id) AS last FROM gone
        """
    )


_COUNT_PURGEABLE = text(
    """
    SELECT
        (SELECT count(*) FROM outbox.messages
         WHERE state = ANY(:states) AND updated_at < :cutoff) AS messages,
        (SELECT count(*) FROM outbox.webhook_events WHERE processed_at < :cutoff) AS webhooks,
        (SELECT count(*) FROM outbox.parked_statuses WHERE orphaned_at < :cutoff) AS orphans
    """
).bindparams(bindparam("states", type_=ARRAY(Text())))

PURGE_TABLES = {
    "messages": _PURGE_MESSAGES,
    "webhook_events": _purge_rows("webhook_events", "processed_at < :cutoff"),
    "orphan statuses": _purge_rows("parked_statuses", "orphaned_at < :cutoff"),
}


@dataclass
class Applied:
    """What a batch of replays or cancels did: the rows changed, and those that had changed
    meanwhile and were left alone."""

    done: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


class OperatorStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def candidates(self, selector: Selector) -> AsyncIterator[list[Candidate]]:
        """The selected rows, a page at a time, in id order."""
        where, params = selector.where()
        query = text(
            f"""
            SELECT m.id, m.channel, m.recipient, m.state, m.error_code, m.attempts,
                   m.expires_at, m.payload, m.fallback_template, c.last_inbound_at,
                   {_REACHED} AS reached
            FROM outbox.messages AS m
            LEFT JOIN outbox.contacts AS c ON c.channel = m.channel AND c.wa_id = m.wa_id
            WHERE {where} AND m.id > :after
            ORDER BY m.id LIMIT {_PAGE}
            """
        ).columns(payload=JSONB, fallback_template=JSONB)
        after = 0
        while True:
            async with self._engine.connect() as connection:
                rows = (await connection.execute(query, {**params, "after": after})).all()
            if not rows:
                return
            yield [
                Candidate(
                    id=r.id,
                    channel=r.channel,
                    recipient=r.recipient,
                    state=State(r.state),
                    error_code=r.error_code,
                    attempts=r.attempts,
                    expires_at=r.expires_at,
                    payload=r.payload,
                    fallback_template=r.fallback_template,
                    last_inbound_at=r.last_inbound_at,
                    reached=r.reached,
                )
                for r in rows
            ]
            after = rows[-1].id

    async def replay(
        self,
        ids: Sequence[int],
        states: Sequence[State],
        *,
        actor: str,
        forced: bool,
        expires_at: datetime | None,
        note: str | None,
    ) -> Applied:
        params = {"expires_at": expires_at}
        return await self._act(_REPLAY, ids, states, actor, forced, note, params)

    async def cancel(
        self, ids: Sequence[int], states: Sequence[State], *, actor: str, note: str | None
    ) -> Applied:
        return await self._act(_CANCEL, ids, states, actor, False, note, {})

    async def _act(
        self,
        statement: Any,
        ids: Sequence[int],
        states: Sequence[State],
        actor: str,
        forced: bool,
        note: str | None,
        extra: dict[str, Any],
    ) -> Applied:
        params = {
            "ids": list(ids),
            "states": [s.value for s in states],
            "actor": actor,
            "forced": forced,
            "note": note,
            **extra,
        }
        async with self._engine.begin() as connection:
            await connection.execute(_LOCK_TIMEOUT)
            done = set((await connection.execute(statement, params)).scalars().all())
            if done:
                await connection.execute(WAKE_SENDERS)
        return Applied(sorted(done), [i for i in ids if i not in done])

    async def count_purgeable(self, states: Sequence[State], cutoff: datetime) -> dict[str, int]:
        params = {"states": [s.value for s in states], "cutoff": cutoff}
        async with self._engine.connect() as connection:
            row = (await connection.execute(_COUNT_PURGEABLE, params)).one()
        return {
            "messages": row.messages,
            "webhook_events": row.webhooks,
            "orphan statuses": row.orphans,
        }

    async def purge_batch(
        self, table: str, after: int, cutoff: datetime, batch: int, states: Sequence[State]
    ) -> tuple[int, int]:
        """Delete one batch from `table`; returns how many went and the id to continue after
        (the same `after` when the end was reached)."""
        params: dict[str, Any] = {"after": after, "cutoff": cutoff, "batch": batch}
        if table == "messages":
            params["states"] = [s.value for s in states]
        async with self._engine.begin() as connection:
            await connection.execute(_LOCK_TIMEOUT)
            row = (await connection.execute(PURGE_TABLES[table], params)).one()
        return int(row.n), int(row.last) if row.last is not None else after
