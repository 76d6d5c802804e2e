"""Resend history: every earlier message id of a row, so that only its current send is current.

A row is sent again by the window fallback, an operator's replay and the unknown resend. Its
`wamid` is the current send's id; `outbox.message_sends` keeps each earlier one (with what that
send went out as, and when it was accepted). The trigger `messages_send_started` moves a row's
wamid there, and clears it with the delivery times of that send, when a claim starts a new send
(queued → sending); the reconciler and the replay record the earlier send themselves when they
requeue a row, with what it was sent as (the requeue may change `sent_as`), so the trigger's copy
is the one for rows requeued by the unknown resend or by a release before this one.

Additive: the release before keeps running on this schema (its claims clear the old wamid too).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
# Only adds (a table, a function, a trigger): the release before runs on it unchanged.
compatible_with = "0009"

_ARCHIVE = """
CREATE FUNCTION outbox.archive_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox.message_sends (message_id, wamid, sent_as, accepted_at)
    VALUES (OLD.id, OLD.wamid, OLD.sent_as, OLD.accepted_at)
    ON CONFLICT DO NOTHING;
    -- What the row says from now on is about the new send only.
    NEW.wamid := NULL;
    NEW.accepted_at := NULL;
    NEW.sent_at := NULL;
    NEW.delivered_at := NULL;
    NEW.read_at := NULL;
    NEW.failed_at := NULL;
    RETURN NEW;
END
$$
"""

# A claim starts a new send: the row's id, if any, is an earlier send's. (A rescued row taken
# back by its holder, unknown → sending, is the same send and keeps its id.)
_STARTED = """
CREATE TRIGGER messages_send_started BEFORE UPDATE OF state ON outbox.messages
FOR EACH ROW WHEN (OLD.state = 'queued' AND NEW.state = 'sending' AND OLD.wamid IS NOT NULL)
EXECUTE FUNCTION outbox.archive_send()
"""


def upgrade() -> None:
    op.create_table(
        "message_sends",
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("wamid", sa.Text, nullable=False),
        sa.Column("sent_as", sa.Text),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column(
            "superseded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("message_id", "wamid", name="pk_message_sends"),
        schema="outbox",
    )
    op.create_index("ix_message_sends_wamid", "message_sends", ["wamid"], schema="outbox")
    op.execute(_ARCHIVE)
    op.execute(_STARTED)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP TRIGGER messages_send_started ON outbox.messages")
    op.execute("DROP FUNCTION outbox.archive_send()")
    op.drop_table("message_sends", schema="outbox")
