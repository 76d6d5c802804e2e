"""The channel registry: `outbox.channels`, with a NOTIFY on every change.

Every replica reads its channels from here (besides its config file) and listens on
`outbox_channels`, so that adding, changing, disabling or removing a channel reaches running
replicas without a restart. Credentials are held by reference or sealed under the master key
(outbox.sealing); no plaintext column exists.

Additive: a new table, function and trigger; nothing the release before reads changes, so it
still runs on this schema (it ignores the registry: during a rolling update only the new
release's replicas send for registry channels, and old ones may still fail such rows as
`unknown_channel` once no new replica is live).

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0011"

_SECRETS = ("api_key", "webhook_username", "webhook_password")
_WAYS = ("env", "file", "sealed")


def _one_way(name: str) -> str:
    return "num_nonnulls(" + ", ".join(f"{name}_{way}" for way in _WAYS) + ")"


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default="registry"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("dialect", sa.Text, nullable=False),
        sa.Column("base_url", sa.Text, nullable=False),
        sa.Column("rate_per_second", sa.Float, nullable=False, server_default=sa.text("20")),
        sa.Column("burst", sa.Float),
        sa.Column("namespace", sa.Text),
        sa.Column("unknown_policy", sa.Text, nullable=False, server_default="resend"),
        sa.Column("webhook_auth", sa.Text, nullable=False, server_default="basic"),
        sa.Column(
            "recipient_gap",
            sa.Interval,
            nullable=False,
            server_default=sa.text("'0'::interval"),
        ),
        sa.Column("max_in_flight", sa.Integer),
        sa.Column("replay_share", sa.Float, nullable=False, server_default=sa.text("0.2")),
        sa.Column("phone_number_id", sa.Text),
        sa.Column("waba_id", sa.Text),
        sa.Column("partner_channel_id", sa.Text),
        sa.Column("client_id", sa.Text),
        *[sa.Column(f"{name}_{way}", sa.Text) for name in _SECRETS for way in _WAYS],
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.CheckConstraint("source IN ('file', 'registry')", name="ck_channels_source"),
        sa.CheckConstraint("octet_length(id) BETWEEN 1 AND 200", name="ck_channels_id"),
        sa.CheckConstraint(
            f"source = 'file' OR {_one_way('api_key')} = 1", name="ck_channels_api_key"
        ),
        sa.CheckConstraint(
            " AND ".join(f"{_one_way(n)} <= 1" for n in _SECRETS)
            + " AND (source = 'registry' OR "
            + " + ".join(_one_way(n) for n in _SECRETS)
            + " = 0)",
            name="ck_channels_secrets",
        ),
        schema="outbox",
    )
    op.create_index(
        "ix_channels_partner_channel_id",
        "channels",
        ["partner_channel_id"],
        unique=True,
        schema="outbox",
        postgresql_where=sa.text("partner_channel_id IS NOT NULL"),
    )
    # One notification per statement, whoever writes (the CLI, a script, psql): replicas re-read
    # the registry on it; a periodic re-read covers a notification lost with a connection.
    op.execute(
        """
CREATE FUNCTION outbox.notify_channels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_channels', '');
    RETURN NULL;
END
$$
        """
    )
    op.execute(
        "CREATE TRIGGER channels_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
        " ON outbox.channels FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_channels()"
    )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.drop_table("channels", schema="outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox.notify_channels()")
