"""Claim benchmark: a backlog to one recipient must not slow the channel's claims (not a test).

    python -m tests.bench.one_recipient [--backlog 100000] [--others 1000] [--claims 20]
        [--revision head]

Starts an embedded PostgreSQL, migrates it, queues --backlog priority-1 rows to one recipient
plus --others ordinary rows to distinct recipients on one channel, ANALYZEs, then times
--claims claims of 100 through `MessageStore.claim` (each rolled back to `queued` afterwards
so every claim sees the same queue) and prints the first (cold: statements not yet prepared)
and the median and worst of the rest. `--revision 0011` measures the schema before the cheap
head triggers (0012), for a before/after on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

import asyncpg

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.demo import embedded_database
from outbox.domain.ratelimit import Limits

_BACKLOG = """
INSERT INTO outbox.messages (channel, recipient, payload, priority)
SELECT 'bench', '4917000000001', '{"type": "text", "text": {"body": "x"}}', 1
FROM generate_series(1, $1)
"""
_OTHERS = """
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT 'bench', '49151' || lpad(g::text, 8, '0'), '{"type": "text", "text": {"body": "x"}}'
FROM generate_series(1, $1) AS g
"""
_UNCLAIM = """
UPDATE outbox.messages SET state = 'queued', claimed_by = NULL, lease_until = NULL,
       attempts = 0, sent_as = NULL
WHERE state = 'sending'
"""


async def bench(backlog: int, others: int, claims: int, revision: str) -> None:
    async with embedded_database() as url:
        engine = create_engine(url, pool_size=2)
        try:
            await migrate.upgrade(engine, revision)
            connection = await asyncpg.connect(url)
            try:
                started = time.perf_counter()
                await connection.execute(_BACKLOG, backlog)
                await connection.execute(_OTHERS, others)
                inserted = time.perf_counter() - started
                await connection.execute("VACUUM ANALYZE outbox.messages")
                # The INSERT's dirty pages are written now, not by a checkpoint during the
                # claims: a faster INSERT would otherwise leave more of them to the claims.
                await connection.execute("CHECKPOINT")
                store = MessageStore(engine)
                limits = Limits(rate=1_000_000, burst=1_000_000)
                times: list[float] = []
                sizes: list[int] = []
                for _ in range(claims):
                    started = time.perf_counter()
                    claim = await store.claim("bench", 100, "bench", timedelta(minutes=1), limits)
                    times.append((time.perf_counter() - started) * 1000)
                    sizes.append(len(claim.messages))
                    await connection.execute(_UNCLAIM)
            finally:
                await connection.close()
        finally:
            await engine.dispose()
    first, rest = times[0], times[1:]
    cut = sorted(rest)
    print(
        f"revision {revision}: backlog {backlog:,} rows to one recipient + {others:,} others; {claims} claims of 100 "
        f"(claimed {min(sizes)}-{max(sizes)}): first {first:.1f} ms, then p50 "
        f"{statistics.median(rest):.1f} ms, p99 {cut[min(len(cut) - 1, int(0.99 * len(cut)))]:.1f}"
        f" ms, worst {max(rest):.1f} ms; "
        f"the INSERTs took {inserted:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=1_000)
    parser.add_argument("--claims", type=int, default=21)
    parser.add_argument("--revision", default="head", help="migrate to this revision only")
    args = parser.parse_args()
    asyncio.run(bench(args.backlog, args.others, args.claims, args.revision))


if __name__ == "__main__":
    main()
