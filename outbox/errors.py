"""The exception hierarchy: one root, small classes, translated at the edges."""

from __future__ import annotations


class OutboxError(Exception):
    """An outbox error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(OutboxError):
    """The configuration is invalid."""


class DatabaseError(OutboxError):
    """The database is unreachable or misbehaved."""


class SchemaOutdated(DatabaseError):
    """The database schema is not at the current migration."""


class BodyRejected(OutboxError):
    """The database refused a webhook body itself (not an outage)."""
