"""The insert NOTIFY names the channels of a small statement.

A sender visits the channels with due rows from a cursor, each with its share of the free
slots. When thousands of channels each hold a backlog (a partner's client running a campaign
on all its numbers), a row inserted on another channel waited for the cursor to come round:
with 1,000,000 rows over 10,000 channels, none of 10 one-row inserts on an eleventh channel
was requested within 3 s (issue 16's fairness goal: p99 under 1 s). Now a statement that
inserted at most 100 rows names its channels in the notification's payload (comma-separated,
at most 2,000 bytes; otherwise the payload stays empty, as before), and a sender visits those
channels first in its next claim round, as fq_codel serves new flows before old ones. A bulk
load still wakes the senders once, naming nothing.

The transition table is the one `messages_heads_settled` already captures for every INSERT
(PostgreSQL keeps one per statement for all the triggers that reference it).

Additive: the release before listens without reading the payload (`compatible_with`).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None
compatible_with = "0023"

_NAMING = """
CREATE OR REPLACE FUNCTION outbox.notify_messages_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    named text := '';
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM inserted LIMIT 101) AS first) <= 100 THEN
        SELECT coalesce(string_agg(channel, ',' ORDER BY channel), '') INTO named
        FROM (SELECT DISTINCT channel FROM inserted) AS distinct_channels;
        IF octet_length(named) > 2000 THEN
            named := '';
        END IF;
    END IF;
    PERFORM pg_notify('outbox_messages', named);
    RETURN NULL;
END $$
"""

_PLAIN = """
CREATE OR REPLACE FUNCTION outbox.notify_messages_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_messages', '');
    RETURN NULL;
END $$
"""


def _trigger(referencing: str) -> None:
    op.execute("DROP TRIGGER messages_inserted_notify ON outbox.messages")
    op.execute(
        "CREATE TRIGGER messages_inserted_notify AFTER INSERT ON outbox.messages"
        f" {referencing} FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_messages_inserted()"
    )


def upgrade() -> None:
    # The old function body needs no transition table; the new one does: trigger first.
    _trigger("REFERENCING NEW TABLE AS inserted")
    op.execute(_NAMING)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute(_PLAIN)
    _trigger("")
