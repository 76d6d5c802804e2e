"""Retention (`outbox purge`): finished messages, processed webhook rows, old orphan statuses and
account events, contacts that wrote last long ago, the pairs they leave unused and idempotency
keys past their own retention, deleted in small batches that each commit on their own."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text

from outbox.db.errors import translated
from outbox.db.operator_store import LOCK_TIMEOUT
from outbox.db.sql import OPEN_STATES
from outbox.domain.models import State
from outbox.domain.operations import PurgeCursor, Purged

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
    ), sends AS (
        DELETE FROM outbox.message_sends WHERE message_id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM outbox.messages AS m USING doomed WHERE m.id = doomed.id
        RETURNING m.id, m.channel, m.idempotency_key, m.created_at
    ), keys AS (
        -- Kept longer than the message: a producer's retry with the key stays a no-op (0020).
        INSERT INTO outbox.idempotency_keys (channel, idempotency_key, message_id, created_at)
        SELECT channel, idempotency_key, id, created_at FROM gone
        WHERE idempotency_key IS NOT NULL
        ON CONFLICT (channel, idempotency_key) DO NOTHING
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


# A contact goes when nothing touched it since the cutoff and its last inbound message is older
# than the cutoff and than a day: its 24-hour window is closed whatever the retention, so no
# send is decided differently without it (a missing contact reads as a closed window).
_OLD_CONTACT = """
    updated_at < :cutoff
    AND (last_inbound_at IS NULL
         OR last_inbound_at < least(:cutoff, now() - interval '24 hours'))
"""

# A pair (phone number and BSUID) goes when it was learned before the cutoff, neither spelling
# has a contact left (so it opens no window) and no open row is keyed on either (so no line's
# order depends on it). A later row to the BSUID is then keyed on the BSUID until the pair is
# learned again from the next body that names both.
_OLD_PAIR = f"""
    learned_at < :cutoff
    AND NOT EXISTS (SELECT 1 FROM outbox.contacts AS k
                    WHERE k.channel = p.channel AND k.wa_id IN (p.wa_id, p.bsuid))
    AND NOT EXISTS (SELECT 1 FROM outbox.messages AS m
                    WHERE m.channel = p.channel AND m.wa_id IN (p.wa_id, p.bsuid)
                      AND m.state IN ({OPEN_STATES}))
"""


def _purge_keyed(table: str, key: str, condition: str) -> TextClause:
    """Keyset batches over a (channel, `key`) primary key, as for the tables keyed by id."""
    return text(
        f"""
        WITH doomed AS (
            SELECT channel, {key} FROM outbox.{table} AS p
            WHERE (channel, {key}) > (:after_channel, :after_key) AND {condition}
            ORDER BY channel, {key} LIMIT :batch
            FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM outbox.{table} AS t USING doomed
            WHERE t.channel = doomed.channel AND t.{key} = doomed.{key}
            RETURNING t.channel, t.{key} AS key
        )
        SELECT count(*) AS n,
               (array_agg(channel ORDER BY channel DESC, key DESC))[1] AS last_channel,
               (array_agg(key ORDER BY channel DESC, key DESC))[1] AS last_key
        FROM gone
        """
    )


# Oldest first over their own index; deleted rows are not met again, so no cursor is needed.
_PURGE_KEYS = text(
    """
    WITH doomed AS (
        SELECT channel, idempotency_key FROM outbox.idempotency_keys
        WHERE created_at < :cutoff
        ORDER BY created_at LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM outbox.idempotency_keys AS k USING doomed
        WHERE k.channel = doomed.channel AND k.idempotency_key = doomed.idempotency_key
        RETURNING 1
    )
    SELECT count(*) AS n, NULL::bigint AS last FROM gone
    """
)

_COUNT_PURGEABLE = text(
    f"""
    SELECT
        (SELECT count(*) FROM outbox.messages
         WHERE state = ANY(:states) AND updated_at < :cutoff) AS messages,
        (SELECT count(*) FROM outbox.webhook_events WHERE processed_at < :cutoff) AS webhooks,
        (SELECT count(*) FROM outbox.parked_statuses WHERE orphaned_at < :cutoff) AS orphans,
        (SELECT count(*) FROM outbox.account_events WHERE recorded_at < :cutoff) AS account,
        (SELECT count(*) FROM outbox.contacts WHERE {_OLD_CONTACT}) AS contacts,
        -- Counted before the contacts go: a dry run's figure is a lower bound.
        (SELECT count(*) FROM outbox.identity_pairs AS p WHERE {_OLD_PAIR}) AS pairs,
        (SELECT count(*) FROM outbox.idempotency_keys WHERE created_at < :keys_cutoff) AS keys
    """
).bindparams(bindparam("states", type_=ARRAY(Text())))

_PURGE = {
    Purged.MESSAGES: _PURGE_MESSAGES,
    Purged.WEBHOOK_EVENTS: _purge_rows("webhook_events", "processed_at < :cutoff"),
    Purged.ORPHAN_STATUSES: _purge_rows("parked_statuses", "orphaned_at < :cutoff"),
    Purged.ACCOUNT_EVENTS: _purge_rows("account_events", "recorded_at < :cutoff"),
    Purged.CONTACTS: _purge_keyed("contacts", "wa_id", _OLD_CONTACT),
    Purged.IDENTITY_PAIRS: _purge_keyed("identity_pairs", "bsuid", _OLD_PAIR),
    Purged.IDEMPOTENCY_KEYS: _PURGE_KEYS,
}

# Keyed by (channel, text) rather than by id.
_KEYED = frozenset({Purged.CONTACTS, Purged.IDENTITY_PAIRS})


class RetentionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def count_purgeable(
        self, states: Sequence[State], cutoff: datetime, keys_cutoff: datetime
    ) -> dict[Purged, int]:
        params = {"states": [s.value for s in states], "cutoff": cutoff, "keys_cutoff": keys_cutoff}
        async with self._engine.connect() as connection:
            row = (await connection.execute(_COUNT_PURGEABLE, params)).one()
        return {
            Purged.MESSAGES: row.messages,
            Purged.WEBHOOK_EVENTS: row.webhooks,
            Purged.ORPHAN_STATUSES: row.orphans,
            Purged.ACCOUNT_EVENTS: row.account,
            Purged.CONTACTS: row.contacts,
            Purged.IDENTITY_PAIRS: row.pairs,
            Purged.IDEMPOTENCY_KEYS: row.keys,
        }

    @translated
    async def purge_batch(
        self,
        table: Purged,
        after: PurgeCursor,
        cutoff: datetime,
        batch: int,
        states: Sequence[State],
    ) -> tuple[int, PurgeCursor]:
        """Delete one batch from `table`; returns how many went and where to continue (the
        same `after` when the end was reached)."""
        params: dict[str, Any] = {"cutoff": cutoff, "batch": batch}
        keyed = table in _KEYED
        if keyed:
            params["after_channel"], params["after_key"] = (
                after if isinstance(after, tuple) else ("", "")
            )
        else:
            params["after"] = after if isinstance(after, int) else 0
        if table is Purged.MESSAGES:
            params["states"] = [s.value for s in states]
        async with self._engine.begin() as connection:
            await connection.execute(LOCK_TIMEOUT)
            row = (await connection.execute(_PURGE[table], params)).one()
        last: PurgeCursor
        if keyed:
            last = None if row.last_channel is None else (row.last_channel, row.last_key)
        else:
            last = None if row.last is None else int(row.last)
        return int(row.n), after if last is None else last
