"""SQLAlchemy Core tables: the single source for Alembic's target metadata. The tables are in
modules named for what they own, each on this `metadata`; all are imported at the end."""

from __future__ import annotations

from sqlalchemy import MetaData

SCHEMA = "outbox"
NOTIFY_CHANNEL = "outbox_messages"
WEBHOOK_NOTIFY_CHANNEL = "outbox_webhooks"


def inserted_channels(payload: str) -> list[str]:
    """The channels a NOTIFY_CHANNEL payload names: a small insert's (migration 0027), or none."""
    return payload.split(",") if payload else []


# A recipient's key (`messages.wa_id`), for per-recipient order, pacing and the window lookup:
# `outbox.recipient_key` (migration 0015), the SQL spelling of outbox.domain.identity's rule.
def recipient_key(channel: str, recipient: str) -> str:
    """The SQL expression of the key for a `channel` and `recipient` given as SQL."""
    return f"outbox.recipient_key({channel}, {recipient})"


metadata = MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    },
)

# Each group of tables has a module of its own; imported here so that `metadata` (Alembic's
# target, the drift test) holds them all.
from outbox.db import account_tables as _account_tables  # noqa: E402, F401
from outbox.db import channel_tables as _channel_tables  # noqa: E402, F401
from outbox.db import message_tables as _message_tables  # noqa: E402, F401
from outbox.db import operation_tables as _operation_tables  # noqa: E402, F401
from outbox.db import policy_tables as _policy_tables  # noqa: E402, F401
from outbox.db import registry_tables as _registry_tables  # noqa: E402, F401
from outbox.db import role_tables as _role_tables  # noqa: E402, F401
from outbox.db import webhook_tables as _webhook_tables  # noqa: E402, F401
