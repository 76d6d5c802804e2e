"""Issue 18's tables (0016): the template registry and users' marketing preferences."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from outbox.db.tables import metadata

# The template registry (0016): what the sender knows of each template of a WABA. Written from
# template webhooks, from send answers (132015: paused) and by `outbox templates resume`; read by
# the sender (hold paused templates' rows; marketing or not, for 131048 and pricing).
templates = Table(
    "templates",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("waba_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("language", Text, nullable=False),
    Column("template_id", Text),
    # As Meta spells them: APPROVED, PAUSED, DISABLED, REJECTED, ...; NULL: not known.
    Column("status", Text),
    Column("category", Text),  # MARKETING, UTILITY, AUTHENTICATION; NULL: not known
    Column("quality", Text),
    Column("reason", Text),
    # The time of the event the status came from: an older event never overwrites a newer one.
    Column("status_at", DateTime(timezone=True)),
    Column("source", Text, nullable=False),  # webhook, send, operator
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("waba_id", "name", "language"),
    CheckConstraint(
        "octet_length(waba_id) <= 128 AND octet_length(name) <= 512"
        " AND octet_length(language) <= 32",
        name="key",
    ),
)

# A user's marketing opt-out (or opt-in again) per channel and category (0016), from a 131050
# answer or a `user_preferences` webhook: the record a later consent ledger builds on.
marketing_preferences = Table(
    "marketing_preferences",
    metadata,
    Column("channel", Text, nullable=False),
    Column("identity", Text, nullable=False),  # a wa_id (digits) or a BSUID, as learned
    Column("category", Text, nullable=False),  # as Meta names it: marketing_messages
    Column("opted_out", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),
    Column("evidence", JSONB),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("channel", "identity", "category"),
    CheckConstraint("source IN ('131050', 'user_preferences', 'operator')", name="source"),
    CheckConstraint("evidence IS NULL OR octet_length(evidence::text) <= 4096", name="evidence"),
)
