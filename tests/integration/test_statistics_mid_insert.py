"""Statistics taken while a bulk INSERT was uncommitted call `outbox.messages` empty.

An ANALYZE at that moment (autovacuum's, any time) sees pages full of rows it cannot see and
records `reltuples = 0`; until the next ANALYZE every plan believes the table empty (issue 16).
The sender's own statements over a batch of ids go through the primary key whatever the
statistics say, and the daemon refreshes such statistics itself within seconds (migration 0026)
instead of leaving claims to walk every row until autovacuum comes back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import SenderConfig
from outbox.db.engine import create_engine
from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from outbox.services.maintenance import Maintenance
from tests.support import fetch

LIMITS = Limits(rate=1e6, burst=1e6)
TAKEN = 200
_REMOVED = re.compile(r"Rows Removed by (?:Join )?Filter: (\d+)")


async def _insert_during_analyze(db_url: str, rows: int) -> None:
    """`rows` rows on one channel, analyzed by another session before they commit."""
    pending = await asyncpg.connect(db_url)
    try:
        async with pending.transaction():
            await pending.execute(
                "INSERT INTO outbox.messages (channel, recipient, payload)"
                ' SELECT \'c0\', \'49151\' || g, \'{"type": "text", "text": {"body": "x"}}\''
                " FROM generate_series(1, $1) AS g",
                rows,
            )
            await fetch(db_url, "ANALYZE outbox.messages")
    finally:
        await pending.close()
    assert await _believed(db_url) == 0  # what the planner believes of the table now


async def _believed(db_url: str) -> float:
    [[believed]] = await fetch(
        db_url, "SELECT reltuples FROM pg_class WHERE oid = 'outbox.messages'::regclass"
    )
    return float(believed)


@pytest.fixture
async def explained(db_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine whose statements auto_explain reports (top level only: a trigger's own
    statements are not the statement's plan)."""
    plans: list[str] = []
    engine = create_engine(db_url, pool_size=1)

    @event.listens_for(engine.sync_engine, "connect")
    def explain(connection: Any, _record: Any) -> None:
        connection.driver_connection.add_log_listener(lambda _c, m: plans.append(str(m)))

    async with engine.connect() as connection:
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET client_min_messages = log",
        ):
            await connection.exec_driver_sql(setting)
        await connection.commit()
    yield engine, plans
    await engine.dispose()


def _compared(plans: list[str]) -> int:
    """Rows of `messages` read and thrown away, by its scans and by joins with it (filters
    over the statement's own batch do not count)."""
    compared, node = 0, ""
    for line in (line for plan in plans for line in plan.splitlines()):
        if "->" in line or "(cost=" in line:
            node = line
        elif (removed := _REMOVED.search(line)) and re.search(r" on messages |Join|Loop", node):
            compared += int(removed.group(1))
    return compared


async def test_renewals_and_answers_read_only_their_rows_when_the_table_looks_empty(
    db_url: str, explained: tuple[AsyncEngine, list[str]]
) -> None:
    """Before: the renewal walked the table as the outer side of a join with the held rows
    (200 x 5,000 comparisons) and the answers' lock read every row of the table."""
    engine, plans = explained
    await _insert_during_analyze(db_url, 5000)
    store = MessageStore(engine)
    claims = await store.claim_many(
        [ClaimRequest("c0", TAKEN, LIMITS)], "w", timedelta(minutes=5), window_margin=timedelta(0)
    )
    ids = [m.id for m in claims["c0"].messages]
    assert len(ids) == TAKEN

    plans.clear()
    assert len((await store.renew(ids, "w", timedelta(minutes=5))).extended) == TAKEN
    # The held rows against each other at worst (a join of 200 with 200), never the table.
    assert _compared(plans) <= TAKEN * TAKEN, plans

    plans.clear()
    now = datetime.now(UTC)
    answers = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids]
    assert await store.complete(answers, "w") == TAKEN
    assert _compared(plans) <= TAKEN, plans  # before: 4,800 (every row of the table but ours)


async def test_the_daemon_refreshes_statistics_that_call_the_table_empty(
    db_url: str, engine: AsyncEngine, explained: tuple[AsyncEngine, list[str]]
) -> None:
    """With such statistics the claim's probe for an older open row of the line walked the
    channel's every row through another index, once per row taken (200 x 12,000 rows here).
    The sender's housekeeping analyzes the table within STATISTICS_EVERY, and claims read what
    they take again."""
    rows = 12_000  # the function leaves tables under 10,000 rows to autovacuum
    await _insert_during_analyze(db_url, rows)
    # The inserting session's row counts reach the cumulative statistics when it ends.
    for _ in range(100):
        [[live]] = await fetch(
            db_url,
            "SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass",
        )
        if live >= rows:
            break
        await asyncio.sleep(0.1)
    config = SenderConfig(maintenance_interval=timedelta(seconds=5))
    maintenance = Maintenance(HousekeepingStore(engine), [], config, worker_id="w")
    await maintenance.tick()  # the first of every two ticks (10 s / 5 s) leaves it alone
    assert await _believed(db_url) == 0
    await maintenance.tick()
    assert await _believed(db_url) == rows
    assert await HousekeepingStore(engine).refresh_statistics() is None  # fresh: left alone

    explained_engine, plans = explained
    plans.clear()
    claims = await MessageStore(explained_engine).claim_many(
        [ClaimRequest("c0", TAKEN, LIMITS)], "w", timedelta(minutes=5), window_margin=timedelta(0)
    )
    assert len(claims["c0"].messages) == TAKEN
    assert _compared(plans) <= 2 * TAKEN, plans
