"""What plan tests share: statistics in the state that misleads the planner, and engines whose
statements auto_explain reports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.engine import create_engine
from tests.support import fetch

EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET client_min_messages = log",
)


async def insert_during_analyze(db_url: str, rows: int, channel: str = "c0") -> None:
    """`rows` rows on `channel`, analyzed by another session before they commit: the statistics
    then call the table empty (`reltuples = 0`, its pages full), as an autovacuum ANALYZE at
    that moment leaves them (issue 16)."""
    pending = await asyncpg.connect(db_url)
    try:
        async with pending.transaction():
            await pending.execute(
                "INSERT INTO outbox.messages (channel, recipient, payload)"
                ' SELECT $2, \'49151\' || g, \'{"type": "text", "text": {"body": "x"}}\''
                " FROM generate_series(1, $1) AS g",
                rows,
                channel,
            )
            await fetch(db_url, "ANALYZE outbox.messages")
    finally:
        await pending.close()
    assert await believed_rows(db_url) == 0  # what the planner believes of the table now


async def believed_rows(db_url: str) -> float:
    [[believed]] = await fetch(
        db_url, "SELECT reltuples FROM pg_class WHERE oid = 'outbox.messages'::regclass"
    )
    return float(believed)


@asynccontextmanager
async def explained_engine(db_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine of one connection whose statements auto_explain reports into the list (top
    level only: a trigger's own statements are not the statement's plan)."""
    plans: list[str] = []
    engine = create_engine(db_url, pool_size=1)

    @event.listens_for(engine.sync_engine, "connect")
    def explain(connection: Any, _record: Any) -> None:
        connection.driver_connection.add_log_listener(lambda _c, m: plans.append(str(m)))

    try:
        async with engine.connect() as connection:
            for setting in EXPLAIN:
                await connection.exec_driver_sql(setting)
            await connection.commit()
        yield engine, plans
    finally:
        await engine.dispose()
