"""`outbox.channels`: the channel registry every replica reads (issue 17).

A row holds what a `[[channels]]` entry holds, under the same names, so one validation
(outbox.config_channels.channel_from_entry) serves both. Each credential is held one way: by
reference (`<name>_env`, `<name>_file`: read by every replica from its own environment or
files) or sealed (`<name>_sealed`: encrypted under the master key, outbox.sealing). Rows with
`source = 'file'` mirror a replica's config file: read-only, they carry no credential.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    Interval,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
    true,
)

from outbox.db.tables import metadata

CHANNELS_NOTIFY_CHANNEL = "outbox_channels"
SECRET_FIELDS = ("api_key", "webhook_username", "webhook_password")
SECRET_WAYS = ("env", "file", "sealed")
# What a process that only receives webhooks reads (issue 19: `--role web` holds no API key;
# README "Database roles" grants it SELECT on just these columns).
RECEIVING_SECRETS = ("webhook_username", "webhook_password")


def _secret_columns() -> list[Column[str]]:
    return [Column(f"{name}_{way}", Text) for name in SECRET_FIELDS for way in SECRET_WAYS]


def _one_way(name: str) -> str:
    return "num_nonnulls(" + ", ".join(f"{name}_{way}" for way in SECRET_WAYS) + ")"


channels = Table(
    "channels",
    metadata,
    Column("id", Text, nullable=False),
    Column("source", Text, nullable=False, server_default="registry"),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("dialect", Text, nullable=False),
    Column("base_url", Text, nullable=False),
    Column("rate_per_second", Float, nullable=False, server_default=text("20")),
    Column("burst", Float),
    Column("namespace", Text),
    Column("unknown_policy", Text, nullable=False, server_default="resend"),
    Column("webhook_auth", Text, nullable=False, server_default="basic"),
    Column("recipient_gap", Interval, nullable=False, server_default=text("'0'::interval")),
    Column("max_in_flight", Integer),
    Column("replay_share", Float, nullable=False, server_default=text("0.2")),
    Column("phone_number_id", Text),
    Column("waba_id", Text),
    Column("partner_channel_id", Text),
    Column("client_id", Text),
    *_secret_columns(),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id"),
    CheckConstraint("source IN ('file', 'registry')", name="source"),
    CheckConstraint("octet_length(id) BETWEEN 1 AND 200", name="id"),
    CheckConstraint(
        f"source = 'file' OR {_one_way('api_key')} = 1",
        name="api_key",
    ),
    CheckConstraint(
        " AND ".join(f"{_one_way(n)} <= 1" for n in SECRET_FIELDS)
        + " AND (source = 'registry' OR "
        + " + ".join(_one_way(n) for n in SECRET_FIELDS)
        + " = 0)",
        name="secrets",
    ),
    # Partner-API workflows find a channel by 360dialog's id: one channel per number.
    Index(
        "ix_channels_partner_channel_id",
        "partner_channel_id",
        unique=True,
        postgresql_where=text("partner_channel_id IS NOT NULL"),
    ),
)

RECEIVING_COLUMNS = tuple(c for c in channels.c if not c.name.startswith("api_key_"))
