"""Account pauses (issue 18 §5) on the shared `channel_state` row: a restriction or a ban from
an `account_update` webhook pauses the channel in every replica; a lift ends it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from outbox.db.channel_state import ENSURE_PAUSE_ROW

# Pauses the channel in every replica until `until` (a ban: until lifted), through the same
# shared pause the circuit breaker uses; the pause only grows.
ACCOUNT_PAUSE = text(
    """
    UPDATE outbox.channel_state
    SET paused_until = greatest(paused_until, CAST(:until AS timestamptz)),
        pause_reason = :reason, paused_by = :paused_by, updated_at = now()
    WHERE channel = :channel
    """
)
# A lifted ban or restriction ends an account pause, and one whatever wrote last over it (no
# breaker pause lasts a day: a longer one is the account's); a breaker's own pause stays.
ACCOUNT_LIFT = text(
    """
    UPDATE outbox.channel_state
    SET paused_until = NULL, pause_reason = NULL, pause_key = NULL, paused_by = :paused_by,
        pause_epoch = pause_epoch + 1, updated_at = now()
    WHERE channel = :channel AND paused_until IS NOT NULL
      AND (paused_by = :paused_by OR paused_until > now() + interval '1 day')
    RETURNING channel
    """
)


async def account_pause(
    connection: AsyncConnection, channel: str, until: datetime, reason: str, paused_by: str
) -> None:
    """Inside the caller's transaction (the reconciler's batch)."""
    await connection.execute(ENSURE_PAUSE_ROW, {"channel": channel})
    params = {"channel": channel, "until": until, "reason": reason, "paused_by": paused_by}
    await connection.execute(ACCOUNT_PAUSE, params)


async def account_lift(connection: AsyncConnection, channel: str, paused_by: str) -> bool:
    params = {"channel": channel, "paused_by": paused_by}
    return (await connection.execute(ACCOUNT_LIFT, params)).one_or_none() is not None
