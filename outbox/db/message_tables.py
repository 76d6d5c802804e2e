"""The messages table and its histories: earlier sends, statuses recorded, purged rows'
idempotency keys."""

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
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from outbox.db.tables import metadata
from outbox.domain.models import SentAs, State

# Only recipients' heads (no older open row to the same recipient) are where the claim looks.
_READY = "state = 'queued' AND next_attempt_at IS NULL AND head"


def _in(column: str, values: type[State] | type[SentAs]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


messages = Table(
    "messages",
    metadata,
    # GENERATED ALWAYS since 0020: an explicit id ahead of the sequence broke others' inserts.
    Column("id", BigInteger, Identity(always=True)),
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
    # Since 0011: rows with one key to one recipient go in order; '' (NULL is read as '') is
    # the recipient's own line. Pair pacing stays per recipient.
    Column("ordering_key", Text, nullable=False, server_default=text("''")),
    # Daemon columns.
    # Set by the insert trigger (0015): the recipient's digits, or a BSUID as written (the
    # phone it is paired with, once known).
    Column("wa_id", Text, nullable=False),
    Column("unknown_resends", SmallInteger, nullable=False, server_default=text("0")),
    # No older row of its line (channel, recipient, ordering_key) is open: kept by triggers
    # (revisions 0006, 0011), so only heads are in the claim's indexes.
    Column("head", Boolean, nullable=False, server_default=text("true")),
    Column("replayed_at", DateTime(timezone=True)),
    Column("replays", SmallInteger, nullable=False, server_default=text("0")),
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
    # Since 0016 (issue 18): the send answer's `messages[].message_status`; the status
    # webhooks' `pricing` category and type; the paused template (templates.id) the row waits for.
    Column("message_status", Text),
    Column("pricing_category", Text),
    Column("pricing_type", Text),
    Column("held_template", BigInteger),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("channel", "idempotency_key"),
    CheckConstraint(_in("state", State), name="state"),
    CheckConstraint(f"sent_as IS NULL OR {_in('sent_as', SentAs)}", name="sent_as"),
    CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_object"),
    CheckConstraint("octet_length(ordering_key) <= 200", name="ordering_key"),
    CheckConstraint(
        "message_status IS NULL OR message_status IN "
        "('accepted', 'held_for_quality_assessment', 'paused')",
        name="message_status",
    ),
    CheckConstraint(
        "octet_length(pricing_category) <= 64 AND octet_length(pricing_type) <= 64",
        name="pricing",
    ),
    # Since 0020 (issue 19): 'infinity' crashed the send task; a huge attempts failed every
    # claim of its channel (integer out of range); a huge priority won every claim.
    CheckConstraint(
        "isfinite(send_after) AND (expires_at IS NULL OR isfinite(expires_at))",
        name="finite_times",
    ),
    CheckConstraint(
        "attempts BETWEEN 0 AND 1000 AND priority BETWEEN -1000 AND 1000", name="counters"
    ),
    # Only rows ready now are in these two indexes (live rows, and rows an operator replayed),
    # so the claim stays cheap however many rows are finished, backing off or scheduled for
    # later (those are in ix_messages_due).
    Index(
        "ix_messages_live",
        "channel",
        text("priority DESC"),
        "id",
        postgresql_where=text(f"{_READY} AND replayed_at IS NULL"),
    ),
    Index(
        "ix_messages_replay",
        "channel",
        text("priority DESC"),
        "id",
        postgresql_where=text(f"{_READY} AND replayed_at IS NOT NULL"),
    ),
    Index(
        "ix_messages_due",
        "channel",
        "next_attempt_at",
        postgresql_where=text("state = 'queued' AND next_attempt_at IS NOT NULL AND head"),
    ),
    # Retries due, over every channel by time: which channels have one due now, and when the
    # next comes due (revision 0013).
    Index(
        "ix_messages_due_at",
        "next_attempt_at",
        postgresql_where=text("state = 'queued' AND next_attempt_at IS NOT NULL AND head"),
    ),
    # One line's open rows (channel, recipient, ordering_key): the order probe, the head
    # triggers; the rows waiting behind a head (the repair sweep); rows in flight (a newer one
    # holds an older one opened again; pair pacing).
    Index(
        "ix_messages_line",
        "channel",
        "wa_id",
        "ordering_key",
        "id",
        postgresql_where=text("state IN ('queued', 'sending', 'unknown')"),
    ),
    Index(
        "ix_messages_line_waiting",
        "channel",
        "wa_id",
        "ordering_key",
        "id",
        postgresql_where=text("state = 'queued' AND NOT head"),
    ),
    Index(
        "ix_messages_in_flight",
        "channel",
        "wa_id",
        "ordering_key",
        "id",
        postgresql_where=text("state = 'sending'"),
    ),
    Index(
        "ix_messages_expiry",
        "expires_at",
        postgresql_where=text("state = 'queued' AND expires_at IS NOT NULL"),
    ),
    Index("ix_messages_unknown", "updated_at", postgresql_where=text("state = 'unknown'")),
    Index(
        "ix_messages_lease",
        "lease_until",
        postgresql_where=text("lease_until IS NOT NULL AND state = 'sending'"),
    ),
    Index(
        "ix_messages_held_template",
        "held_template",
        postgresql_where=text("held_template IS NOT NULL"),
    ),
    Index("ix_messages_wamid", "wamid", unique=True, postgresql_where=text("wamid IS NOT NULL")),
    Index(
        "ix_messages_undelivered",
        "channel",
        "accepted_at",
        postgresql_where=text("state IN ('accepted', 'sent')"),
    ),
)

status_history = Table(
    "status_history",
    metadata,
    Column("id", BigInteger, Identity(always=False)),
    Column("message_id", BigInteger, nullable=False),
    Column("wamid", Text, nullable=False),
    Column("status", Text, nullable=False),
    # The notification's own time, or when it was received if it carried none.
    Column("at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("verdict", Text, nullable=False),
    Column("error_code", Text),
    Column("error_title", Text),
    Column("error_detail", Text),
    Column("webhook_event_id", BigInteger),
    PrimaryKeyConstraint("id"),
    # The same notification delivered twice is one entry.
    Index("ix_status_history_message_id", "message_id", "wamid", "status", "at", unique=True),
)

# The earlier sends of a row sent again (fallback, replay, resend): `messages.wamid` is only the
# current send's. Filled by requeues and by the claim's trigger `messages_send_started` (0010).
message_sends = Table(
    "message_sends",
    metadata,
    Column("message_id", BigInteger, nullable=False),
    Column("wamid", Text, nullable=False),
    Column("sent_as", Text),
    Column("accepted_at", DateTime(timezone=True)),
    Column("superseded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("message_id", "wamid"),
    Index("ix_message_sends_wamid", "wamid"),
)

# Since 0020: the idempotency keys of messages `outbox purge` deleted, kept longer (`purge
# --keep-keys`): an INSERT reusing one is skipped, as ON CONFLICT DO NOTHING skips a live one's.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("channel", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("message_id", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("purged_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("channel", "idempotency_key"),
    Index("ix_idempotency_keys_created_at", "created_at"),
)
