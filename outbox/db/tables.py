"""SQLAlchemy Core tables: the single source for Alembic's target metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from outbox.domain.models import SentAs, State

SCHEMA = "outbox"
NOTIFY_CHANNEL = "outbox_messages"

metadata = MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    },
)


def _in(column: str, values: type[State] | type[SentAs]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    # Producer columns.
    Column("channel", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("fallback_template", JSONB),
    Column("idempotency_key", Text),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("send_after", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("metadata", JSONB),
    # Daemon columns.
    Column("state", Text, nullable=False, server_default=text("'queued'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("claimed_by", Text),
    Column("lease_until", DateTime(timezone=True)),
    Column("wamid", Text),
    Column("sent_as", Text),
    Column("error_code", Text),
    Column("error_title", Text),
    Column("error_detail", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("accepted_at", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("read_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("channel", "idempotency_key"),
    CheckConstraint(_in("state", State), name="state"),
    CheckConstraint(f"sent_as IS NULL OR {_in('sent_as', SentAs)}", name="sent_as"),
    CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_object"),
    # Only queued rows are in this index, so the claim stays cheap however many finished rows
    # the table holds.
    Index(
        "ix_messages_claim",
        "channel",
        text("priority DESC"),
        "id",
        postgresql_where=text("state = 'queued'"),
    ),
    Index("ix_messages_lease", "lease_until", postgresql_where=text("state = 'sending'")),
    Index("ix_messages_wamid", "wamid", unique=True, postgresql_where=text("wamid IS NOT NULL")),
)

contacts = Table(
    "contacts",
    metadata,
    Column("channel", Text, nullable=False),
    Column("wa_id", Text, nullable=False),
    Column("last_inbound_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("channel", "wa_id"),
)

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
    PrimaryKeyConstraint("id"),
    Index("ix_webhook_events_pending", "id", postgresql_where=text("processed_at IS NULL")),
)
