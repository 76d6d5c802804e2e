"""Answer-write benchmark: how long a batch of send answers takes to write (not a test).

    python -m tests.bench.answers [--rows 20000] [--batch 200] [--before 0021] [--after head]

Starts an embedded PostgreSQL, migrates it, queues --rows rows to distinct recipients on one
channel, then drains them: claim --batch rows through `MessageStore.claim` and time
`MessageStore.complete` writing them all `accepted` (the sender's result write, triggers
included), and the claim too (its UPDATE fires the same triggers). The schema goes back and forth between --before and --after between batches
(interleaved, so the table's growing share of finished rows weighs on both alike). Prints
the median and p90 of each, so a migration that changes a trigger on the write path (0022: the
hand-over once per statement instead of once per ended row) is compared in one run, on one
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.demo import embedded_database
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits

_ROWS = """
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT 'bench', '49151' || lpad(g::text, 8, '0'),
       '{"type": "template", "template": {"name": "x", "language": {"code": "en"}}}'
FROM generate_series(1, $1) AS g
"""
LIMITS = Limits(rate=1_000_000, burst=1_000_000)


async def _write_one(store: MessageStore, size: int) -> tuple[float, float]:
    """One claim and the write of its answers: how long each took (ms)."""
    started = time.perf_counter()
    claim = await store.claim("bench", size, "bench", timedelta(minutes=1), LIMITS)
    claimed = (time.perf_counter() - started) * 1000
    now = datetime.now(UTC)
    results = [
        SendResult(m.id, State.ACCEPTED, now, wamid=f"wamid.{m.id}", sent_as=m.planned)
        for m in claim.messages
    ]
    started = time.perf_counter()
    written = await store.complete(results, "bench")
    elapsed = (time.perf_counter() - started) * 1000
    assert written == len(results) == size, (written, len(results))
    return claimed, elapsed


def _line(revision: str, times: list[tuple[float, float]], size: int) -> str:
    claims, writes = sorted(t[0] for t in times), sorted(t[1] for t in times)
    return (
        f"revision {revision}: {len(times)} writes of {size} answers: p50"
        f" {statistics.median(writes):.1f} ms, p90 {writes[int(0.9 * (len(writes) - 1))]:.1f}"
        f" ms; their claims: p50 {statistics.median(claims):.1f} ms, p90"
        f" {claims[int(0.9 * (len(claims) - 1))]:.1f} ms"
    )


async def bench(rows: int, size: int, before: str, after: str) -> None:
    batches = rows // size // 2
    async with embedded_database() as url:
        engine = create_engine(url, pool_size=2)
        try:
            await migrate.upgrade(engine, after)
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(_ROWS, rows)
                await connection.execute("VACUUM ANALYZE outbox.messages")
                await connection.execute("CHECKPOINT")
            finally:
                await connection.close()
            store = MessageStore(engine)
            first: list[tuple[float, float]] = []
            second: list[tuple[float, float]] = []
            for _ in range(batches):
                await migrate.downgrade(engine, before)
                first.append(await _write_one(store, size))
                await migrate.upgrade(engine, after)
                second.append(await _write_one(store, size))
        finally:
            await engine.dispose()
    print(_line(before, first, size))
    print(_line(after, second, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--before", default="0021", help="the older revision")
    parser.add_argument("--after", default="head", help="the newer revision")
    args = parser.parse_args()
    asyncio.run(bench(args.rows, args.batch, args.before, args.after))


if __name__ == "__main__":
    main()
