"""Inbound webhooks as received, and the statuses parked until their message is known."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from outbox.db.tables import metadata

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("channel", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("payload", JSONB, nullable=False),
    Column("processed_at", DateTime(timezone=True)),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # False when the channel takes webhooks from anyone (webhook_auth = "none"): its statuses
    # find rows by wamid only. Rows written by other means are trusted, as they always were.
    Column("authenticated", Boolean, nullable=False, server_default=true()),
    # The body's size as received, for the reconciler's byte budget (NULL: measured when taken).
    Column("body_bytes", Integer),
    PrimaryKeyConstraint("id"),
    Index("ix_webhook_events_pending", "id", postgresql_where=text("processed_at IS NULL")),
)

# Statuses that named no known message yet (they can overtake the send result's commit): tried
# again until a horizon, then kept as orphans.
parked_statuses = Table(
    "parked_statuses",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("channel", Text, nullable=False),
    Column("status", JSONB, nullable=False),
    Column("webhook_event_id", BigInteger),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("orphaned_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("id"),
    Index(
        "ix_parked_statuses_next_attempt_at",
        "next_attempt_at",
        postgresql_where=text("orphaned_at IS NULL"),
    ),
)
