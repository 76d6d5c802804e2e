"""Username users: a recipient may be a business-scoped user id (BSUID); phone-BSUID pairs.

`messages.wa_id` is no longer generated from `recipient`: the insert trigger sets it to the
row's recipient key, `outbox.recipient_key(channel, recipient)`. A phone number gives its
digits, as before (every character but the ASCII digits removed). A BSUID (two letters and a
dot first: `US.13491208655302741918`) gives the phone number it is paired with on the channel
when a pair is known, else the BSUID itself, as written. So once a pair is known, rows written
to either spelling share one line, one pace and one window. Rows inserted before their pair
was learned keep the key they got (moving an open row between lines could give a line two
heads); the window lookup follows the pairs for them.

`outbox.identity_pairs` holds the pairs the reconciler and the sender learn from webhooks and
send answers (a phone may have had several BSUIDs: one per number change or rotation).

Additive: no table rewrite (DROP EXPRESSION keeps the stored values), a new table, replaced
trigger functions. The release before still runs on it; it fails rows written to a BSUID as
`invalid_recipient`, so producers should write BSUIDs only once every replica runs this one.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0014"

_OPEN = "state IN ('queued', 'sending', 'unknown')"
_DIGITS = "regexp_replace({}, '[^0-9]', '', 'g')"
_OWN_TIME = "CASE WHEN send_after > now() THEN send_after END"
# The one SQL spelling of outbox.domain.identity's rule (tests/integration/
# test_recipient_spelling.py holds the two together).
_KEY = (
    r"CASE WHEN {recipient} ~ '^[A-Za-z]{{2}}\.' THEN coalesce("
    "(SELECT p.wa_id FROM outbox.identity_pairs AS p"
    " WHERE p.channel = {channel} AND p.bsuid = {recipient}), {recipient})"
    " ELSE regexp_replace({recipient}, '[^0-9]', '', 'g') END"
)

# 0012's insert trigger, with {key} run first and {line}'s recipient part.
_MARK_RUN = """
CREATE OR REPLACE FUNCTION outbox.mark_run() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    NEW.ordering_key := coalesce(NEW.ordering_key, '');
    {key}
    IF NEW.state NOT IN ('queued', 'sending', 'unknown') THEN
        PERFORM set_config('outbox.insert_line', '', true);
        RETURN NEW;
    END IF;
    line := NEW.channel || chr(31) || {line} || chr(31) || NEW.ordering_key;
    NEW.head := current_setting('outbox.insert_line', true) IS DISTINCT FROM line;
    IF NEW.head THEN
        PERFORM set_config('outbox.insert_line', line, true);
    END IF;
    RETURN NEW;
END
$$
"""

_UP = [
    f"""
CREATE FUNCTION outbox.recipient_key(channel text, recipient text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT {_KEY.format(channel="$1", recipient="$2")}
$$
    """,
    f"""
CREATE OR REPLACE FUNCTION outbox.mark_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.ordering_key := coalesce(NEW.ordering_key, '');
        -- Written out rather than calling recipient_key: a call per inserted row costs as
        -- much as the probe itself.
        NEW.wa_id := {_KEY.format(channel="NEW.channel", recipient="NEW.recipient")};
    END IF;
    NEW.head := NOT EXISTS (
        SELECT 1 FROM outbox.messages AS e
        WHERE e.channel = NEW.channel AND e.wa_id = NEW.wa_id
          AND e.ordering_key = NEW.ordering_key AND e.id < NEW.id AND e.{_OPEN});
    RETURN NEW;
END
$$
    """,
    # 0012's insert trigger: the key is set before the line is compared, so the shortcut for a
    # run of one line holds for every spelling of it.
    _MARK_RUN.format(
        key=f"NEW.wa_id := {_KEY.format(channel='NEW.channel', recipient='NEW.recipient')};",
        line="NEW.wa_id",
    ),
    """
CREATE FUNCTION outbox.rekey_recipient() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.wa_id := outbox.recipient_key(NEW.channel, NEW.recipient);
    RETURN NEW;
END
$$
    """,
    # Named to fire before messages_reopened (same event, alphabetical order).
    """
CREATE TRIGGER messages_recipient_changed BEFORE UPDATE OF channel, recipient
ON outbox.messages FOR EACH ROW
WHEN (OLD.channel IS DISTINCT FROM NEW.channel OR OLD.recipient IS DISTINCT FROM NEW.recipient)
EXECUTE FUNCTION outbox.rekey_recipient()
    """,
]

# 0011's mark_head, for the downgrade.
_OLD_MARK_HEAD = f"""
CREATE OR REPLACE FUNCTION outbox.mark_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.ordering_key := coalesce(NEW.ordering_key, '');
    NEW.head := NOT EXISTS (
        SELECT 1 FROM outbox.messages AS e
        WHERE e.channel = NEW.channel AND e.wa_id = {_DIGITS.format("NEW.recipient")}
          AND e.ordering_key = NEW.ordering_key AND e.id < NEW.id AND e.{_OPEN});
    RETURN NEW;
END
$$
"""
_LINE_INDEXES = {
    "ix_messages_line": f"(channel, wa_id, ordering_key, id) WHERE {_OPEN}",
    "ix_messages_line_waiting": "(channel, wa_id, ordering_key, id) "
    "WHERE state = 'queued' AND NOT head",
    "ix_messages_in_flight": "(channel, wa_id, ordering_key, id) WHERE state = 'sending'",
}


def upgrade() -> None:
    op.create_table(
        "identity_pairs",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("bsuid", sa.Text, nullable=False),
        sa.Column("wa_id", sa.Text, nullable=False),
        sa.Column(
            "learned_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("source", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("channel", "bsuid", name="pk_identity_pairs"),
        schema="outbox",
    )
    op.create_index(
        "ix_identity_pairs_wa_id", "identity_pairs", ["channel", "wa_id"], schema="outbox"
    )
    # A catalogue change: the stored keys stay, nothing is rewritten.
    op.execute("ALTER TABLE outbox.messages ALTER COLUMN wa_id DROP EXPRESSION")
    for statement in _UP:
        op.execute(statement)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP TRIGGER messages_recipient_changed ON outbox.messages")
    op.execute("DROP FUNCTION outbox.rekey_recipient()")
    op.execute(_OLD_MARK_HEAD)
    op.execute(_MARK_RUN.format(key="", line="NEW.recipient"))
    op.execute("DROP FUNCTION outbox.recipient_key(text, text)")
    # Generated again (a rewrite): its indexes go with the column and are built again.
    op.drop_column("messages", "wa_id", schema="outbox")
    op.add_column(
        "messages",
        sa.Column("wa_id", sa.Text, sa.Computed(_DIGITS.format("recipient"), persisted=True)),
        schema="outbox",
    )
    op.alter_column("messages", "wa_id", nullable=False, schema="outbox")
    for name, definition in _LINE_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON outbox.messages {definition}")
    op.drop_table("identity_pairs", schema="outbox")
