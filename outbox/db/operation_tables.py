"""Running the fleet: the replicas and the channels they know, operators' actions on rows, and
what each migration declares about the releases that may run on it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY

from outbox.db.tables import metadata

# The channels each replica knows, with its last heartbeat: a row is failed `unknown_channel`
# only for a channel no live replica knows (old and new replicas overlap during a rollout).
replicas = Table(
    "replicas",
    metadata,
    Column("worker_id", Text, nullable=False),
    Column("channels", ARRAY(Text), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("worker_id"),
)

# What operators did to a row (replay, cancel) and the row as it was before: its lineage.
operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("message_id", BigInteger, nullable=False),
    Column("action", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("forced", Boolean, nullable=False, server_default=false()),
    Column("from_state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("wamid", Text),
    Column("error_code", Text),
    Column("error_title", Text),
    Column("note", Text),
    PrimaryKeyConstraint("id"),
    CheckConstraint("action IN ('replay', 'cancel')", name="action"),
    Index("ix_operator_actions_message_id", "message_id"),
)

# What each migration (0009 on) declares about the code that may run on the schema it leaves:
# the oldest release, by its newest revision, that keeps working. A release reads the rows of
# the revisions it does not know, a newer release's, to decide whether it may keep running
# during a rolling update or after a rollback (outbox.domain.schema).
schema_compat = Table(
    "schema_compat",
    metadata,
    Column("revision", Text),
    Column("down_revision", Text),
    Column("compatible_with", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("revision"),
)
