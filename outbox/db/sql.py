"""SQL fragments more than one statement (or store) shares."""

from __future__ import annotations

from sqlalchemy import text

from outbox.db.tables import NOTIFY_CHANNEL
from outbox.domain.codes import OPEN_STATES as _OPEN

# The states of rows not yet settled, for `state IN (...)`: 'queued', 'sending', 'unknown'.
OPEN_STATES = ", ".join(f"'{state.value}'" for state in _OPEN)

# Rows put back in the queue by an UPDATE fire no insert trigger: tell the senders directly.
WAKE_SENDERS = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")
