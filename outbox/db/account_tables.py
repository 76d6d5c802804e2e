"""Issue 18 §5's tables (0017): each channel's account health, and the WABA-level event log."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)

from outbox.db.tables import metadata

# --- account health and WABA-level events (0017, issue 18 §5) ---
# Per channel, what number-quality and capability webhooks last said (the messaging limit).
account_health = Table(
    "account_health",
    metadata,
    Column("channel", Text, nullable=False),
    Column("waba_id", Text),
    Column("display_phone_number", Text),
    Column("quality_event", Text),  # FLAGGED, UNFLAGGED, THROUGHPUT_UPGRADE, ONBOARDING, ...
    Column("current_limit", Text),  # TIER_10K, TIER_UNLIMITED, ...
    Column("old_limit", Text),
    Column("max_daily_conversations", Text),  # a number or a TIER_ name, as Meta sent it
    Column("max_phone_numbers", Integer),
    Column("throughput_upgraded_at", DateTime(timezone=True)),
    Column("event_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("channel"),
)

# Every WABA-level event a reconciler read, and what it did.
account_events = Table(
    "account_events",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("channel", Text, nullable=False),
    Column("waba_id", Text),
    Column("kind", Text, nullable=False),  # template, number_quality, account, capability, ...
    Column("event", Text, nullable=False),
    Column("effect", Text, nullable=False),
    Column("detail", Text),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("webhook_event_id", BigInteger),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id"),
    Index("ix_account_events_channel_at", "channel", "at"),
)
