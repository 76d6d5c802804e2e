"""Raw webhook bodies into `outbox.webhook_events`: one committed row per body, committed in groups.

Bodies that arrive while a write is in progress wait for the next one, so under load many bodies
share one INSERT and one commit (and its WAL flush), and when idle a body is written at once. Every
caller still learns only after the commit that includes its row.

What waits is bounded: while PostgreSQL hangs (no error, no answer) bodies would pile up in memory,
so past `max_held_bytes` a body is refused at once with `WriteQueueFull` (the receiver answers 503
and 360dialog retries it later) instead of joining the queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Boolean, Integer, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.errors import translate, translated_errors
from outbox.errors import BodyRejected, StatementRejected, WriteQueueFull

MAX_GROUP = 500  # bodies per INSERT
# Bodies held (waiting or being written) at most, in bytes: 64 bodies of the largest size the
# receiver takes, or some 30,000 ordinary status bodies of a few hundred bytes.
MAX_HELD_BYTES = 64 * 1024 * 1024
BODY_OVERHEAD = 1024  # what one waiting body costs beyond its text (future, task, row)

# The body goes in as the text we received; PostgreSQL parses it once, into jsonb.
_INSERT_ONE = text(
    "INSERT INTO outbox.webhook_events (channel, payload, authenticated, body_bytes) "
    "VALUES (:channel, CAST(:body AS jsonb), :authenticated, :size) RETURNING id"
)
_BODIES = ArrayColumns(
    (("channel", Text()), ("body", Text()), ("authenticated", Boolean()), ("size", Integer()))
)
# Identity values are drawn in the order the rows are inserted, which ORDER BY fixes; so the
# sorted ids line up with the group's order.
_INSERT_MANY = _BODIES.statement(
    f"""
    INSERT INTO outbox.webhook_events (channel, payload, authenticated, body_bytes)
    SELECT channel, CAST(body AS jsonb), authenticated, size
    FROM {_BODIES.unnest("b", ordinality="n")}
    ORDER BY n
    RETURNING id
    """
)


@dataclass
class _Waiting:
    channel: str
    body: str
    authenticated: bool
    size: int  # bytes as received
    stored: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WebhookEventStore:
    def __init__(self, engine: AsyncEngine, max_held_bytes: int = MAX_HELD_BYTES) -> None:
        self._engine = engine
        self._queue: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self._max_held = max_held_bytes
        self._held = 0  # bytes of the bodies queued or in the INSERT under way

    async def store_webhook(self, channel: str, body: str, *, authenticated: bool) -> int:
        """Store one body, and whether its credentials were checked; returns its row id once
        committed.

        Raises WriteQueueFull at once, without queueing, while too much is waiting already.
        """
        size = len(body.encode("utf-8"))
        held = size + BODY_OVERHEAD
        if self._held + held > self._max_held:
            raise WriteQueueFull(f"{self._held} bytes of webhook bodies wait for the database")
        waiting = _Waiting(channel, body, authenticated, size)
        self._held += held
        waiting.stored.add_done_callback(lambda _: self._release(held))
        self._queue.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        # A client that hangs up does not cancel the write of the group it is in.
        return await asyncio.shield(waiting.stored)

    def _release(self, size: int) -> None:
        self._held -= size

    async def _write_all(self) -> None:
        while self._queue:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                ids = await self._insert(group)
            except BodyRejected:
                # One body jsonb refuses fails the whole statement: store the rest one by one.
                for waiting in group:
                    await self._settle_alone(waiting)
                continue
            except Exception as exc:
                for waiting in group:
                    waiting.stored.set_exception(exc)
                continue
            for waiting, row_id in zip(group, ids, strict=True):
                waiting.stored.set_result(row_id)

    async def _settle_alone(self, waiting: _Waiting) -> None:
        try:
            waiting.stored.set_result((await self._insert([waiting]))[0])
        except Exception as exc:
            waiting.stored.set_exception(exc)

    async def _insert(self, group: list[_Waiting]) -> list[int]:
        with translated_errors():
            try:
                return await self._insert_once(group)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # A pooled connection the database dropped (say, on a restart): once more, fresh.
                return await self._insert_once(group)

    async def _insert_once(self, group: list[_Waiting]) -> list[int]:
        try:
            async with self._engine.begin() as connection:
                if len(group) == 1:
                    one = group[0]
                    params = {
                        "channel": one.channel,
                        "body": one.body,
                        "authenticated": one.authenticated,
                        "size": one.size,
                    }
                    return [(await connection.execute(_INSERT_ONE, params)).scalar_one()]
                params_many = _BODIES.params(
                    [(w.channel, w.body, w.authenticated, w.size) for w in group]
                )
                return sorted((await connection.execute(_INSERT_MANY, params_many)).scalars())
        except DBAPIError as exc:
            # jsonb refuses some valid JSON (a \u0000 escape): the body is at fault. Anything
            # else is ours and propagates.
            if not isinstance(translate(exc), StatementRejected):
                raise
            raise BodyRejected(f"PostgreSQL refused the body: {exc.orig}") from exc
