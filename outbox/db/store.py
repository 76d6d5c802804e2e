"""The message store: claims under a lease, batched result writes, lease hand-back and rescue.

Every transaction here is short and none is open while a request is in flight: a claim commits
before the first byte goes to the API. Every state change is guarded by the state it expects and
by the worker that holds the lease, so a row that changed hands is never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Integer, Text, TypeEngine

from outbox.domain.models import ClaimedMessage, SendResult, State

_CLAIM = text(
    """
    WITH picked AS (
        SELECT id FROM outbox.messages
        WHERE state = 'queued' AND channel = :channel
          AND send_after <= now()
          AND (next_attempt_at IS NULL OR next_attempt_at <= now())
        ORDER BY priority DESC, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'sending', claimed_by = :worker, attempts = m.attempts + 1,
        lease_until = now() + make_interval(secs => :lease_seconds), updated_at = now()
    FROM picked WHERE m.id = picked.id
    RETURNING m.id, m.channel, m.recipient, m.payload, m.fallback_template, m.attempts,
              m.created_at, m.expires_at, m.priority
    """
).columns(payload=JSONB, fallback_template=JSONB)

_TIMESTAMP = DateTime(timezone=True)
_RESULT_COLUMNS: tuple[tuple[str, TypeEngine[Any]], ...] = (
    ("id", BigInteger()),
    ("state", Text()),
    ("at", _TIMESTAMP),
    ("wamid", Text()),
    ("sent_as", Text()),
    ("error_code", Text()),
    ("error_title", Text()),
    ("error_detail", Text()),
    ("next_attempt_at", _TIMESTAMP),
    ("attempts_delta", Integer()),
)

_COMPLETE = text(
    f"""
    UPDATE outbox.messages AS m SET
        state = r.state,
        attempts = m.attempts + r.attempts_delta,
        wamid = coalesce(r.wamid, m.wamid),
        sent_as = coalesce(r.sent_as, m.sent_as),
        error_code = r.error_code,
        error_title = r.error_title,
        error_detail = r.error_detail,
        next_attempt_at = r.next_attempt_at,
        accepted_at = CASE WHEN r.state = 'accepted' THEN r.at ELSE m.accepted_at END,
        failed_at = CASE WHEN r.state = 'failed' THEN r.at ELSE m.failed_at END,
        claimed_by = NULL, lease_until = NULL, updated_at = now()
    FROM unnest({", ".join(f":{name}" for name, _ in _RESULT_COLUMNS)})
        AS r({", ".join(name for name, _ in _RESULT_COLUMNS)})
    WHERE m.id = r.id AND m.state = 'sending' AND m.claimed_by = :worker
    """
).bindparams(*(bindparam(name, type_=ARRAY(kind)) for name, kind in _RESULT_COLUMNS))

_RELEASE = text(
    """
    UPDATE outbox.messages
    SET state = 'queued', attempts = attempts - 1, claimed_by = NULL, lease_until = NULL,
        updated_at = now()
    WHERE id = ANY(:ids) AND state = 'sending' AND claimed_by = :worker
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

# A lease that ran out while `sending` means its holder died mid-send: the request may have
# reached the API, so the row is not resent blindly but parked as `unknown`.
_RESCUE = text(
    """
    WITH lost AS (
        SELECT id FROM outbox.messages
        WHERE state = 'sending' AND lease_until < now()
        ORDER BY lease_until
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'unknown', error_code = 'lease_expired',
        error_title = 'the sending process stopped before recording an outcome',
        error_detail = 'lease held by ' || coalesce(m.claimed_by, '?') || ' expired',
        claimed_by = NULL, lease_until = NULL, updated_at = now()
    FROM lost WHERE m.id = lost.id
    """
)

_STATE_COUNTS = text(
    "SELECT channel, state, count(*) AS n FROM outbox.messages GROUP BY channel, state"
)


def _result_row(r: SendResult) -> tuple[object, ...]:
    return (
        r.message_id,
        r.state.value,
        r.at,
        r.wamid,
        r.sent_as.value if r.sent_as else None,
        r.error_code,
        r.error_title,
        r.error_detail,
        r.next_attempt_at,
        r.attempts_delta,
    )


class MessageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, channel: str, limit: int, worker: str, lease: timedelta
    ) -> list[ClaimedMessage]:
        """Lease up to `limit` due queued rows of `channel`, best priority first."""
        async with self._engine.begin() as connection:
            rows = (
                await connection.execute(
                    _CLAIM,
                    {
                        "channel": channel,
                        "limit": limit,
                        "worker": worker,
                        "lease_seconds": lease.total_seconds(),
                    },
                )
            ).all()
        rows = sorted(rows, key=lambda row: (-row.priority, row.id))
        return [
            ClaimedMessage(
                id=row.id,
                channel=row.channel,
                recipient=row.recipient,
                payload=row.payload,
                fallback_template=row.fallback_template,
                attempts=row.attempts,
                created_at=row.created_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ]

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        """Write outcomes in one statement; returns how many rows were still ours."""
        if not results:
            return 0
        columns = zip(*(_result_row(r) for r in results), strict=True)
        params: dict[str, object] = {
            name: list(values) for (name, _), values in zip(_RESULT_COLUMNS, columns, strict=True)
        }
        params["worker"] = worker
        async with self._engine.begin() as connection:
            result = await connection.execute(_COMPLETE, params)
        return result.rowcount

    async def release(self, ids: Sequence[int], worker: str) -> int:
        """Give unsent leased rows back to the queue, with their attempt."""
        if not ids:
            return 0
        async with self._engine.begin() as connection:
            result = await connection.execute(_RELEASE, {"ids": list(ids), "worker": worker})
        return result.rowcount

    async def rescue_expired_leases(self, limit: int = 1000) -> int:
        async with self._engine.begin() as connection:
            result = await connection.execute(_RESCUE, {"limit": limit})
        return result.rowcount

    async def state_counts(self) -> dict[tuple[str, State], int]:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(_STATE_COUNTS)).all()
        return {(row.channel, State(row.state)): row.n for row in rows}
