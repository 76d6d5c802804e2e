"""The exception hierarchy: one root, small classes, translated at the edges.

Services catch only these. The database adapter turns every driver error into one of three
`DatabaseError` kinds (`outbox.db.errors`), so that no service needs to know the driver.
"""

from __future__ import annotations


class OutboxError(Exception):
    """An outbox error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(OutboxError):
    """The configuration is invalid."""


class DatabaseError(OutboxError):
    """The database is unreachable or misbehaved."""


class DatabaseUnavailable(DatabaseError):
    """The database is away or would not do the work now: retried, never fatal."""


class WriteQueueFull(DatabaseUnavailable):
    """Too many webhook bodies are waiting for the database: try again later."""


class StatementRejected(DatabaseError):
    """The database refused a statement for what it carried: the same input fails again."""


class StatementInvalid(DatabaseError):
    """The database refused a statement itself (its text, or an object or right it needs):
    a bug or an unexpected schema. Retrying will not help, nor will setting the input aside."""


class PrivilegeMissing(StatementInvalid):
    """The database role lacks a privilege the command needs (SQLSTATE 42501): the message
    names it, and which role should run the command (README, "Database roles")."""


class SchemaOutdated(DatabaseError):
    """The database schema is not at the current migration."""


class BodyRejected(StatementRejected):
    """The database refused a webhook body itself (not an outage)."""


# --- channel registry (issue 17) ---
class ChannelNotFound(OutboxError):
    """No channel by that id in the registry."""


class ChannelRefused(OutboxError):
    """The registry refuses the change as asked (a file channel, open rows, a taken id)."""
