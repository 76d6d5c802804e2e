"""`outbox.channels`: the channel registry every replica reads (issue 17).

A row holds what a `[[channels]]` entry holds, under the same names, so one validation
(outbox.config_channels.channel_from_entry) serves both. Each credential is held one way: by
reference (`<name>_env`, `<name>_file`: read by every replica from its own environment or
files) or sealed (`<name>_sealed`: encrypted under the master key, outbox.sealing). Rows with
`source = 'file'` mirror a replica's config file: read-only, they carry no credential. Below
the table, the statements every replica runs over it.
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
    and_,
    func,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert

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

# Plain (non-secret) fields, stored under their ChannelConfig names.
PLAIN_FIELDS = (
    "dialect",
    "base_url",
    "rate_per_second",
    "burst",
    "namespace",
    "unknown_policy",
    "webhook_auth",
    "recipient_gap",
    "max_in_flight",
    "replay_share",
    "phone_number_id",
    "waba_id",
    "partner_channel_id",
    "client_id",
)

# Any insert, update (updated_at moves) or delete changes it.
VERSION = text(
    """
    SELECT count(*) || '/' || coalesce(max(updated_at)::text, '') || '/'
           || coalesce(sum(hashtext(id || updated_at::text))::text, '')
    FROM outbox.channels
    """
)
# Every entry's id, as one array: one value, not a row per channel.
ALL_IDS = text("SELECT coalesce(array_agg(id), '{}') FROM outbox.channels")
_EXCLUDED = insert(channels).excluded
# A file's channel as a read-only entry. Only a mirror whose definition changed is written: a
# restart with the same file writes nothing (no dead rows, and no new version for every other
# replica to read), where each restart used to rewrite every mirror.
MIRROR = (
    insert(channels)
    .on_conflict_do_update(
        index_elements=["id"],
        set_={**{name: _EXCLUDED[name] for name in PLAIN_FIELDS}, "updated_at": func.now()},
        where=and_(
            channels.c.source == "file",
            tuple_(*(channels.c[name] for name in PLAIN_FIELDS)).is_distinct_from(
                tuple_(*(_EXCLUDED[name] for name in PLAIN_FIELDS))
            ),
        ),
    )
    .returning(channels.c.id)
)
