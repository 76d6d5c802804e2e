"""Raw webhook bodies into `outbox.webhook_events`, one committed row per body."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.errors import BodyRejected

# The body goes in as the text we received; PostgreSQL parses it once, into jsonb.
_INSERT = text(
    "INSERT INTO outbox.webhook_events (channel, payload) "
    "VALUES (:channel, CAST(:body AS jsonb)) RETURNING id"
)


class WebhookEventStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def store_webhook(self, channel: str, body: str) -> int:
        try:
            async with self._engine.begin() as connection:
                return int(
                    (
                        await connection.execute(_INSERT, {"channel": channel, "body": body})
                    ).scalar_one()
                )
        except DBAPIError as exc:
            # jsonb refuses some valid JSON (a \u0000 escape) with a data exception (SQLSTATE
            # class 22): the body is at fault. Anything else is ours and propagates.
            if not str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
                raise
            raise BodyRejected(f"PostgreSQL refused the body: {exc.orig}") from exc
