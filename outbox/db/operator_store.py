"""The operator's selection and writes (`outbox replay`, `cancel`): batched, short, re-checked.

Rows are selected once and decided in outbox.domain.operations; every write statement checks the
same conditions again, so a row that changed meanwhile (a late status, a sender's claim) is
left alone rather than overwritten. Each batch is its own short transaction with a lock
timeout, so an operator's command never holds up the daemon for long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import BigInteger, Text

from outbox.db.errors import translated, translated_errors
from outbox.db.identities import last_inbound
from outbox.db.sql import WAKE_SENDERS
from outbox.db.tables import recipient_key
from outbox.domain.codes import DELIVERY_RANK, Code, Title
from outbox.domain.models import State
from outbox.domain.operations import Candidate
from outbox.ports import Applied, Selector

_PAGE = 1000
# Each operator batch waits at most this long for a row lock, so it never holds up the daemon.
LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '5s'")

# The furthest delivery status the row itself or its history records, as a rank 1..3. The
# ranks run 1..n, so a status's position in the array of statuses by rank is its rank.
_BY_RANK = sorted(DELIVERY_RANK, key=DELIVERY_RANK.__getitem__)  # sent, delivered, read
_ROW_RANK = " ".join(
    f"WHEN m.{s.value}_at IS NOT NULL THEN {DELIVERY_RANK[s]}" for s in reversed(_BY_RANK)
)
_STATUSES = ", ".join(f"'{s.value}'" for s in _BY_RANK)
_RANK_STATUS = " ".join(f"WHEN {DELIVERY_RANK[s]} THEN '{s.value}'" for s in reversed(_BY_RANK))
_REACHED = f"""
    CASE greatest(
        CASE {_ROW_RANK} ELSE 0 END,
        coalesce((SELECT max(array_position(ARRAY[{_STATUSES}], h.status))
                  FROM outbox.status_history AS h WHERE h.message_id = m.id), 0))
    {_RANK_STATUS} END
"""


def _where(selector: Selector) -> tuple[str, dict[str, Any]]:
    clauses = ["m.state = ANY(CAST(:states AS text[]))"]
    params: dict[str, Any] = {"states": [s.value for s in selector.states]}
    if selector.ids:
        clauses.append("m.id = ANY(CAST(:ids AS bigint[]))")
        params["ids"] = list(selector.ids)
    if selector.channel is not None:
        clauses.append("m.channel = :channel")
        params["channel"] = selector.channel
    if selector.error_codes:
        clauses.append("m.error_code = ANY(CAST(:error_codes AS text[]))")
        params["error_codes"] = list(selector.error_codes)
    if selector.since is not None:
        clauses.append("m.created_at >= :since")
        params["since"] = selector.since
    if selector.until is not None:
        clauses.append("m.created_at < :until")
        params["until"] = selector.until
    if selector.recipient is not None:
        # The same key as the wa_id column, so '+49 151…' finds it; a BSUID also finds the rows
        # written to it before its pair was known, which kept it as their key.
        key = recipient_key("m.channel", "CAST(:recipient AS text)")
        clauses.append(f"m.wa_id IN ({key}, CAST(:recipient AS text))")
        params["recipient"] = selector.recipient
    return " AND ".join(clauses), params


_TARGET = """
    SELECT m.id, m.state, m.attempts, m.wamid, m.error_code, m.error_title, m.sent_as,
           m.accepted_at
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

# A replay re-checks what the decision checked: no delivery on record (unless forced) and an
# expiry, old or new, still ahead.
_REPLAYABLE = f"""
    (:forced OR ({_REACHED}) IS NULL)
    AND (coalesce(CAST(:expires_at AS timestamptz), m.expires_at) IS NULL
         OR coalesce(CAST(:expires_at AS timestamptz), m.expires_at) > now())
"""

# Back to the queue as new: attempts, errors and delivery times cleared (the old ones stay in
# operator_actions and status_history), content re-decided by the window rule at send time,
# and into the replay lane. The earlier send's id goes to the row's history with what it went
# out as (`sent_as` is cleared); the row shows it until the claim, as any earlier send's.
_REPLAY = text(
    f"""
    WITH target AS ({_TARGET.format(condition=_REPLAYABLE)}), ended AS (
        INSERT INTO outbox.message_sends (message_id, wamid, sent_as, accepted_at)
        SELECT id, wamid, sent_as, accepted_at FROM target WHERE wamid IS NOT NULL
        ON CONFLICT DO NOTHING
    ), done AS (
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
        SET state = 'cancelled', next_attempt_at = NULL, error_code = :code,
            error_title = :title, error_detail = :note, updated_at = now(),
            -- No holder of an earlier attempt (a rescued row's) may write over the cancel.
            claimed_by = NULL, lease_until = NULL
        FROM target AS t WHERE m.id = t.id
        RETURNING m.id
    )
    {_ACTION.format(action="cancel")}
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())), bindparam("states", type_=ARRAY(Text())))


class OperatorStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def candidates(self, selector: Selector) -> AsyncIterator[list[Candidate]]:
        """The selected rows, a page at a time, in id order."""
        where, params = _where(selector)
        query = text(
            f"""
            SELECT m.id, m.channel, m.recipient, m.state, m.error_code, m.attempts,
                   m.expires_at, m.payload, m.fallback_template,
                   {last_inbound("m.channel", "m.wa_id")} AS last_inbound_at,
                   {_REACHED} AS reached
            FROM outbox.messages AS m
            WHERE {where} AND m.id > :after
            ORDER BY m.id LIMIT {_PAGE}
            """
        ).columns(payload=JSONB, fallback_template=JSONB)
        after = 0
        while True:
            with translated_errors():
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

    @translated
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

    @translated
    async def cancel(
        self, ids: Sequence[int], states: Sequence[State], *, actor: str, note: str | None
    ) -> Applied:
        params = {"code": Code.CANCELLED.value, "title": Title.CANCELLED.value}
        return await self._act(_CANCEL, ids, states, actor, False, note, params)

    async def _act(
        self,
        statement: TextClause,
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
            await connection.execute(LOCK_TIMEOUT)
            done = set((await connection.execute(statement, params)).scalars().all())
            if done:
                await connection.execute(WAKE_SENDERS)
        return Applied(sorted(done), [i for i in ids if i not in done])
