"""The registry's NOTIFY only for statements that changed a row.

Every replica re-reads the registry on `outbox_channels` (a forced read: the version check is
skipped). The trigger fired for every statement, also one that changed nothing: a sender's
start records its file's channels (an upsert that now writes only the changed ones), so each
restart of one replica had every other replica read every entry again. Now INSERT, UPDATE and
DELETE notify only when their transition table holds a row; TRUNCATE always does.

Additive: the notification is the same; only fewer are sent (`compatible_with`).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None
compatible_with = "0023"

# One function for the four triggers: each statement of PL/pgSQL is planned when it first runs,
# so the TRUNCATE trigger (which has no transition table) never plans the EXISTS.
_CHANGED_ONLY = """
CREATE OR REPLACE FUNCTION outbox.notify_channels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('outbox_channels', '');
    ELSIF EXISTS (SELECT 1 FROM changed) THEN
        PERFORM pg_notify('outbox_channels', '');
    END IF;
    RETURN NULL;
END
$$
"""

_ALWAYS = """
CREATE OR REPLACE FUNCTION outbox.notify_channels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_channels', '');
    RETURN NULL;
END
$$
"""

# A trigger with a transition table takes one event: one per event.
_TRIGGERS = {
    "channels_inserted": ("INSERT", "REFERENCING NEW TABLE AS changed"),
    "channels_updated": ("UPDATE", "REFERENCING NEW TABLE AS changed"),
    "channels_deleted": ("DELETE", "REFERENCING OLD TABLE AS changed"),
    "channels_truncated": ("TRUNCATE", ""),
}


def upgrade() -> None:
    op.execute("DROP TRIGGER channels_changed ON outbox.channels")
    op.execute(_CHANGED_ONLY)
    for name, (event, referencing) in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON outbox.channels {referencing}"
            " FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_channels()"
        )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON outbox.channels")
    op.execute(_ALWAYS)
    op.execute(
        "CREATE TRIGGER channels_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
        " ON outbox.channels FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_channels()"
    )
