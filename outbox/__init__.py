"""outbox: a WhatsApp message-outbox daemon for PostgreSQL and 360dialog."""

from __future__ import annotations

__version__ = "0.1.0"
