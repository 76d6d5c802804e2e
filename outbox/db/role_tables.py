"""Issue 19 §1's table (0018): which producer role may write and read which channels' rows.

Row-level security on `outbox.messages` (enabled by the README's producer snippet, not by a
migration: see "Database roles") lets a producer role see and insert only rows of the channels
listed here for it. Nothing in the daemon reads it.
"""

from __future__ import annotations

from sqlalchemy import Column, PrimaryKeyConstraint, Table, Text

from outbox.db.tables import metadata

# --- producer channels (0018, issue 19 §1) ---
producer_channels = Table(
    "producer_channels",
    metadata,
    Column("producer", Text, nullable=False),  # a role name, as current_user gives it
    Column("channel", Text, nullable=False),
    PrimaryKeyConstraint("producer", "channel"),
)
