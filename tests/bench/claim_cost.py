"""What a claim costs per channel it names (not a test).

    python -m tests.bench.claim_cost [--rounds 150] [--repeat 2]

Claims 200 rows a round from one channel, then one row from each of 200 channels (a partner's
rows spread over its numbers), --rounds rounds each, --repeat times in turn, with the real
`MessageStore.claim_many` against an embedded PostgreSQL and no sender around it. Prints per
round the client's CPU (this process's), the backend's CPU (its /proc entry) and the wall time.
Nothing else runs in the process, so the figures hold from one run to the next far better than
a drain's (issue 16: the per-channel cost of the spread case, measured apart from the API and
the event loop's other work).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
import uvloop
from sqlalchemy import text

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.demo import embedded_database
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.bench.scale import _ENQUEUE, channel_id

_ROWS = 200  # claimed a round, as the sender's default batch
_UNLIMITED = Limits(rate=1e9, burst=1e9)


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _case(dsn: str, channels: int, rounds: int) -> str:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE outbox.messages, outbox.channel_state CASCADE")
        await connection.execute(_ENQUEUE, _ROWS * (rounds + 1), channels, False)
        await connection.execute("VACUUM ANALYZE outbox.messages")
    finally:
        await connection.close()
    engine = create_engine(dsn, pool_size=1)  # one connection: its backend is the one measured
    try:
        async with engine.connect() as probe:
            backend = int(await probe.scalar(text("SELECT pg_backend_pid()")))
        store = MessageStore(engine)
        each = _ROWS // channels
        requests = [ClaimRequest(channel_id(n), each, _UNLIMITED) for n in range(channels)]
        lease = timedelta(minutes=5)
        await store.claim_many(requests, "bench", lease)  # buckets created, statements prepared
        cpu, db, wall, rows = time.process_time(), _backend_cpu(backend), time.perf_counter(), 0
        for _ in range(rounds):
            claims = await store.claim_many(requests, "bench", lease)
            rows += sum(len(claim.messages) for claim in claims.values())
        cpu, db = time.process_time() - cpu, _backend_cpu(backend) - db
        wall = time.perf_counter() - wall
    finally:
        await engine.dispose()
    if rows != _ROWS * rounds:
        raise SystemExit(f"{rows} rows claimed, {_ROWS * rounds} expected")
    per = 1000 / rounds
    return (
        f"{channels:>4} channel(s) x {each:>3} rows: client CPU {cpu * per:5.2f} ms, "
        f"backend CPU {db * per:5.2f} ms, wall {wall * per:5.2f} ms a round"
    )


async def main(args: argparse.Namespace) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        for _ in range(args.repeat):
            for channels in (1, _ROWS):
                print(await _case(dsn, channels, args.rounds), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2)
    uvloop.run(main(parser.parse_args()))
