"""Template registry, marketing preferences, held messages and pricing (issue 18 §2 §3 §5).

`templates`: what the sender knows of each template (per WABA, name and language): its status,
category and quality, written from template webhooks, from send answers (132015: paused) and by
`outbox templates resume`. A row held for a paused template names it (`messages.held_template`)
and goes back to the queue when the template is active again.

`marketing_preferences`: a user's marketing opt-out (or opt-in again) per channel and category,
with when, from what (a 131050 answer, a `user_preferences` webhook) and the evidence, capped.

On messages: `message_status` (the send answer's `messages[].message_status`), `pricing_category`
and `pricing_type` (status webhooks' `pricing`), `held_template`. On channel_state:
`marketing_hold_until` (131048 holds the channel's marketing traffic, in every replica). On
recipient_pace: `strikes`, the 131056 answers in a row (the recipient's pause grows with them).

Additive: new tables, nullable columns with no default or with constant defaults (no rewrite),
checks added NOT VALID then validated, the index built CONCURRENTLY. The release before runs on
it: it never names the new columns and leaves them NULL (its rows are never held for a template
nor paced with strikes).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0015"

_MESSAGE_CHECKS = {
    "message_status": "message_status IS NULL OR message_status IN "
    "('accepted', 'held_for_quality_assessment', 'paused')",
    "pricing": "octet_length(pricing_category) <= 64 AND octet_length(pricing_type) <= 64",
}


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False)),
        sa.Column("waba_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("template_id", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("category", sa.Text),
        sa.Column("quality", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("status_at", sa.DateTime(timezone=True)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint(
            "waba_id", "name", "language", name="uq_templates_waba_id_name_language"
        ),
        sa.CheckConstraint(
            "octet_length(waba_id) <= 128 AND octet_length(name) <= 512"
            " AND octet_length(language) <= 32",
            name="ck_templates_key",
        ),
        schema="outbox",
    )
    op.create_table(
        "marketing_preferences",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("opted_out", sa.Boolean, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("evidence", JSONB),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("channel", "identity", "category", name="pk_marketing_preferences"),
        sa.CheckConstraint(
            "source IN ('131050', 'user_preferences', 'operator')",
            name="ck_marketing_preferences_source",
        ),
        sa.CheckConstraint(
            "evidence IS NULL OR octet_length(evidence::text) <= 4096",
            name="ck_marketing_preferences_evidence",
        ),
        schema="outbox",
    )
    for column in ("message_status", "pricing_category", "pricing_type"):
        op.add_column("messages", sa.Column(column, sa.Text), schema="outbox")
    op.add_column("messages", sa.Column("held_template", sa.BigInteger), schema="outbox")
    for name, check in _MESSAGE_CHECKS.items():
        # Checked without holding producers off: NOT VALID, then validated under a light lock.
        op.execute(
            f"ALTER TABLE outbox.messages ADD CONSTRAINT ck_messages_{name} CHECK ({check})"
            " NOT VALID"
        )
        op.execute(f"ALTER TABLE outbox.messages VALIDATE CONSTRAINT ck_messages_{name}")
    op.add_column(
        "channel_state",
        sa.Column("marketing_hold_until", sa.DateTime(timezone=True)),
        schema="outbox",
    )
    op.add_column(
        "recipient_pace",
        sa.Column("strikes", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        schema="outbox",
    )
    # Without blocking producers' inserts; an interrupted run can be repeated.
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_held_template")
        op.execute(
            "CREATE INDEX CONCURRENTLY ix_messages_held_template ON outbox.messages"
            " (held_template) WHERE held_template IS NOT NULL"
        )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_held_template")
    op.drop_column("recipient_pace", "strikes", schema="outbox")
    op.drop_column("channel_state", "marketing_hold_until", schema="outbox")
    for name in _MESSAGE_CHECKS:
        op.drop_constraint(f"ck_messages_{name}", "messages", schema="outbox")
    for column in ("held_template", "pricing_type", "pricing_category", "message_status"):
        op.drop_column("messages", column, schema="outbox")
    op.drop_table("marketing_preferences", schema="outbox")
    op.drop_table("templates", schema="outbox")
