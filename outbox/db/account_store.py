"""Applies an `AccountPlan` (outbox.domain.account_plan) inside the reconciler's transaction:
the template registry and marketing preferences through their stores' functions, the shared
channel pause, `account_health` and the `account_events` log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Text

from outbox.db.account_pauses import account_lift, account_pause
from outbox.db.arrays import ArrayColumns
from outbox.db.errors import translated
from outbox.db.preferences import record_preference
from outbox.db.sql import WAKE_SENDERS
from outbox.db.templates import record_template
from outbox.domain.account_events import Capability, NumberQuality
from outbox.domain.account_plan import PAUSED_BY, AccountPlan

_DETAIL_LIMIT = 1000

LOG_COLUMNS = ArrayColumns(
    (
        ("channel", Text()),
        ("waba_id", Text()),
        ("kind", Text()),
        ("event", Text()),
        ("effect", Text()),
        ("detail", Text()),
        ("at", DateTime(timezone=True)),
        ("webhook_event_id", BigInteger()),
    )
)
LOG_EVENTS = LOG_COLUMNS.statement(
    f"""
    INSERT INTO outbox.account_events ({LOG_COLUMNS.names})
    SELECT {LOG_COLUMNS.names} FROM {LOG_COLUMNS.unnest("e")}
    """
)

# What an event did not carry stays as it was; the throughput upgrade keeps its time.
RECORD_HEALTH = text(
    """
    INSERT INTO outbox.account_health AS h
        (channel, waba_id, display_phone_number, quality_event, current_limit, old_limit,
         max_daily_conversations, max_phone_numbers, throughput_upgraded_at, event_at)
    VALUES (:channel, :waba_id, :display, :event, :current_limit, :old_limit, :max_daily,
            :max_numbers, CASE WHEN :event = 'THROUGHPUT_UPGRADE' THEN CAST(:at AS timestamptz) END,
            :at)
    ON CONFLICT (channel) DO UPDATE SET
        waba_id = coalesce(excluded.waba_id, h.waba_id),
        display_phone_number = coalesce(excluded.display_phone_number, h.display_phone_number),
        quality_event = coalesce(excluded.quality_event, h.quality_event),
        current_limit = coalesce(excluded.current_limit, h.current_limit),
        old_limit = coalesce(excluded.old_limit, h.old_limit),
        max_daily_conversations = coalesce(excluded.max_daily_conversations,
                                           h.max_daily_conversations),
        max_phone_numbers = coalesce(excluded.max_phone_numbers, h.max_phone_numbers),
        throughput_upgraded_at = greatest(excluded.throughput_upgraded_at,
                                          h.throughput_upgraded_at),
        event_at = greatest(excluded.event_at, h.event_at),
        updated_at = now()
    """
)


async def apply_account_plan(connection: AsyncConnection, plan: AccountPlan) -> None:
    for key, update in plan.templates:
        await record_template(
            connection,
            key,
            source="webhook",
            at=update.at,
            status=update.status,
            category=update.category,
            quality=update.quality,
            template_id=update.template_id,
            reason=update.reason,
        )
    for preference in plan.preferences:
        await record_preference(connection, preference)
    for channel, event in plan.health:
        await connection.execute(RECORD_HEALTH, _health(channel, event))
    for channel, until, reason in plan.pauses:
        await account_pause(connection, channel, until, reason[:_DETAIL_LIMIT], PAUSED_BY)
    lifted = [c for c in dict.fromkeys(plan.lifts) if await account_lift(connection, c, PAUSED_BY)]
    if lifted:
        await connection.execute(WAKE_SENDERS)
    if plan.log:
        rows = [
            (
                e.channel,
                e.waba_id,
                e.kind,
                e.event,
                e.effect,
                None if e.detail is None else e.detail[:_DETAIL_LIMIT],
                e.at,
                e.webhook_event_id,
            )
            for e in plan.log
        ]
        await connection.execute(LOG_EVENTS, LOG_COLUMNS.params(rows))


def _health(channel: str, event: NumberQuality | Capability) -> dict[str, object]:
    quality = event if isinstance(event, NumberQuality) else None
    return {
        "channel": channel,
        "waba_id": event.waba_id,
        "display": quality.display_phone_number if quality else None,
        "event": quality.event if quality else None,
        "current_limit": quality.current_limit if quality else None,
        "old_limit": quality.old_limit if quality else None,
        "max_daily": event.max_daily,
        "max_numbers": event.max_numbers if isinstance(event, Capability) else None,
        "at": event.at,
    }


HEALTH = text(
    """
    SELECT channel, waba_id, display_phone_number, quality_event, current_limit, old_limit,
           max_daily_conversations, max_phone_numbers, throughput_upgraded_at, event_at
    FROM outbox.account_health ORDER BY channel
    """
)
# The events an operator must see: pauses, lifts and alerts (not every template change).
RECENT_EVENTS = text(
    """
    SELECT channel, kind, event, effect, detail, at FROM outbox.account_events
    WHERE kind IN ('account', 'number_quality', 'capability')
    ORDER BY at DESC, id DESC LIMIT :limit
    """
)


class AccountHealthStore:
    """What `outbox stats` shows of the accounts: limits, quality, the latest account events."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def health(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as connection:
            return [dict(r._mapping) for r in await connection.execute(HEALTH)]

    @translated
    async def recent_events(self, limit: int = 10) -> list[dict[str, Any]]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(RECENT_EVENTS, {"limit": limit})
            return [dict(r._mapping) for r in rows]
