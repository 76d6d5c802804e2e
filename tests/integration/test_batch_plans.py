"""The sender's statements over a batch of ids read those rows, whatever the statistics say.

Two states of the statistics the planner meets in production (issue 16):
- taken when few rows were in flight (any quiet moment): the partial indexes of rows in flight
  and of `unknown` rows look empty, and the answers' statement read every row in flight through
  them for each batch written;
- taken while a bulk INSERT was uncommitted (autovacuum's ANALYZE, any time): `reltuples = 0`
  and every plan believes the table empty. Renewals and answers go through the primary key
  anyway, and the daemon refreshes such statistics itself within seconds (migration 0026)
  instead of leaving claims to walk every row until autovacuum comes back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import SenderConfig
from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from outbox.services.maintenance import Maintenance
from tests.plans import believed_rows, explained_engine, insert_during_analyze
from tests.support import fetch

LIMITS = Limits(rate=1e6, burst=1e6)
TAKEN = 200
_REMOVED = re.compile(r"Rows Removed by (?:Join )?Filter: (\d+)")
_READ = re.compile(r" on messages \w+ .*actual time=\S+ rows=([\d.]+) loops=(\d+)")


@pytest.fixture
async def explained(db_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    async with explained_engine(db_url) as made:
        yield made


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


def _read(plans: list[str]) -> float:
    """Rows (and index entries) of `messages` the plans' scans returned, over all their loops."""
    return sum(float(rows) * int(loops) for plan in plans for rows, loops in _READ.findall(plan))


async def test_answers_and_renewals_read_their_rows_by_id_when_few_were_in_flight(
    db_url: str, explained: tuple[AsyncEngine, list[str]]
) -> None:
    """Statistics from a quiet moment. Before, each batch of answers read every row in flight
    (every replica's) through both partial indexes: here 140 rows for 20 written."""
    engine, plans = explained
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload)"
        ' SELECT \'c0\', \'49151\' || g, \'{"type": "text", "text": {"body": "x"}}\''
        " FROM generate_series(1, 5000) AS g",
    )
    await fetch(db_url, "ANALYZE outbox.messages")  # nothing in flight
    store = MessageStore(engine)
    claims = await store.claim_many(
        [ClaimRequest("c0", TAKEN, LIMITS)], "w", timedelta(minutes=5), window_margin=timedelta(0)
    )
    ids = [m.id for m in claims["c0"].messages]
    batch = 20
    for start in range(0, TAKEN // 2, batch):  # 5 batches answered, 100 rows still in flight
        plans.clear()
        answered = ids[start : start + batch]
        now = datetime.now(UTC)
        answers = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in answered]
        assert await store.complete(answers, "w") == batch
        renewed = ids[TAKEN // 2 :]
        assert len((await store.renew(renewed, "w", timedelta(minutes=5))).extended) == 100
    plans.clear()
    answers = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids[-batch:]]
    assert await store.complete(answers, "w") == batch
    assert _read(plans) <= 3 * batch, plans  # locked, then updated, by id

    plans.clear()
    renewed = ids[TAKEN // 2 : -batch]
    assert len((await store.renew(renewed, "w", timedelta(minutes=5))).extended) == len(renewed)
    assert _read(plans) <= 3 * len(renewed), plans


async def test_renewals_and_answers_read_only_their_rows_when_the_table_looks_empty(
    db_url: str, explained: tuple[AsyncEngine, list[str]]
) -> None:
    """Before: the renewal walked the table as the outer side of a join with the held rows
    (200 x 5,000 comparisons) and the answers' lock read every row of the table."""
    engine, plans = explained
    await insert_during_analyze(db_url, 5000)
    store = MessageStore(engine)
    claims = await store.claim_many(
        [ClaimRequest("c0", TAKEN, LIMITS)], "w", timedelta(minutes=5), window_margin=timedelta(0)
    )
    ids = [m.id for m in claims["c0"].messages]
    assert len(ids) == TAKEN

    plans.clear()
    assert len((await store.renew(ids, "w", timedelta(minutes=5))).extended) == TAKEN
    # The batch against itself at worst (200 x 200), never the table against it (999,813).
    assert _compared(plans) <= TAKEN * TAKEN, plans
    assert _read(plans) <= 3 * TAKEN, plans  # before: 5,000 (every row, as the outer side)

    plans.clear()
    now = datetime.now(UTC)
    answers = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids]
    assert await store.complete(answers, "w") == TAKEN
    assert _compared(plans) <= TAKEN, plans  # before: 4,813 (every row of the table but ours)
    assert _read(plans) <= 3 * TAKEN, plans


async def test_the_daemon_refreshes_statistics_that_call_the_table_empty(
    db_url: str, engine: AsyncEngine, explained: tuple[AsyncEngine, list[str]]
) -> None:
    """With such statistics the claim's probe for an older open row of the line walked the
    channel's every row through another index, once per row taken (200 x 12,000 rows here).
    The sender's housekeeping analyzes the table within STATISTICS_EVERY, and claims read what
    they take again."""
    rows = 12_000  # the function leaves tables under 10,000 rows to autovacuum
    await insert_during_analyze(db_url, rows)
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
    assert await believed_rows(db_url) == 0
    await maintenance.tick()
    assert await believed_rows(db_url) == rows
    assert await HousekeepingStore(engine).refresh_statistics() is None  # fresh: left alone

    explained_engine, plans = explained
    plans.clear()
    claims = await MessageStore(explained_engine).claim_many(
        [ClaimRequest("c0", TAKEN, LIMITS)], "w", timedelta(minutes=5), window_margin=timedelta(0)
    )
    assert len(claims["c0"].messages) == TAKEN
    assert _compared(plans) <= 2 * TAKEN, plans
