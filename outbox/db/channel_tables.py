"""Per channel and per recipient: the window's inbound times, learned identities, pair pacing,
and the channel's shared state (pause, token bucket, holds)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)

from outbox.db.tables import metadata

contacts = Table(
    "contacts",
    metadata,
    Column("channel", Text, nullable=False),
    Column("wa_id", Text, nullable=False),
    Column("last_inbound_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("channel", "wa_id"),
)

# Since 0015: phone numbers and the business-scoped user ids (BSUIDs) learned for them, per
# channel; `source` says where (inbound, status, contacts, send_answer, user_id_update, ...).
identity_pairs = Table(
    "identity_pairs",
    metadata,
    Column("channel", Text, nullable=False),
    Column("bsuid", Text, nullable=False),
    Column("wa_id", Text, nullable=False),
    Column("learned_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("source", Text, nullable=False),
    PrimaryKeyConstraint("channel", "bsuid"),
    Index("ix_identity_pairs_wa_id", "channel", "wa_id"),
)

recipient_pace = Table(
    "recipient_pace",
    metadata,
    Column("channel", Text, nullable=False),
    Column("wa_id", Text, nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    # Since 0016: 131056 answers in a row for this pair; the pause grows with them, a success
    # resets it (outbox.domain.policy.pair_pause).
    Column("strikes", SmallInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("channel", "wa_id"),
    Index("ix_recipient_pace_not_before", "not_before"),  # the next pace to end (0013)
)

channel_state = Table(
    "channel_state",
    metadata,
    Column("channel", Text, nullable=False),
    Column("paused_until", DateTime(timezone=True)),
    Column("pause_reason", Text),
    Column("paused_by", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The shared token bucket (outbox.domain.ratelimit) and the throttle hold.
    Column("tokens", Float, nullable=False, server_default=text("0")),
    Column("refilled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("rate", Float),
    Column("hold_until", DateTime(timezone=True)),
    # Since 0008: when the shared rate was last cut; resumes recorded (a failure extends only a
    # pause of its own epoch); the fingerprint of the key a credential pause was caused by.
    Column("slowed_at", DateTime(timezone=True)),
    Column("pause_epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("pause_key", Text),
    # Since 0016: a spam-rate limit (131048) holds the channel's marketing traffic until then.
    Column("marketing_hold_until", DateTime(timezone=True)),
    PrimaryKeyConstraint("channel"),
)
