"""What transaction pooling costs the sender (not a test).

    python -m tests.bench.pgbouncer [--messages 3000] [--rounds 3] [--statements 2000]

Starts an embedded PostgreSQL and a real PgBouncer in transaction mode in front of it (from
deploy/pgbouncer.ini, as the tests do), and the sandbox with no latency. Each round, for each
way in, it queues --messages rows in a fresh copy of a migrated database and drains them with
the sender in this process, timing the drain:

- direct:             PostgreSQL itself, statement caches on (pooler = "none")
- direct, uncached:   PostgreSQL itself with pooler = "pgbouncer": the price of the settings alone
- through pgbouncer:  PgBouncer with pooler = "pgbouncer": the settings plus the extra hop

Prints messages per second per way (median of the rounds) and the ratio to direct. Drains are
long and this machine is shared, so it then times what the ways differ in, interleaved so that
load falls on all three alike: --statements transactions of one indexed read each (the claim's
kind of statement), per way, and prints the median and 90th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import replace

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import logconfig
from outbox.config import DatabaseConfig, Pooler, Settings
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from outbox.sandbox import Sandbox
from tests import pgbouncer
from tests.support import KEYS, drain, enqueue_in_window, settings_for

WAYS = ("direct", "direct, uncached", "through pgbouncer")


async def _database(admin_url: str, name: str, template: str) -> str:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    return admin_url.replace("/outbox?", f"/{name}?")


async def _round(
    way: str, url: str, bouncer: pgbouncer.PgBouncer, base_url: str, messages: int
) -> float:
    # The listener is direct in every way, as "Behind PgBouncer" says.
    settings: Settings = replace(
        settings_for(url, base_url, batch_size=200), listen_database_url=url
    )
    if way != "direct":
        settings = replace(settings, database=DatabaseConfig(Pooler.PGBOUNCER))
    if way == "through pgbouncer":
        settings = replace(settings, database_url=bouncer.url(url))
    await enqueue_in_window(url, messages)
    began = time.perf_counter()
    await drain(settings)
    return messages / (time.perf_counter() - began)


_READ = text("SELECT id, state FROM outbox.messages WHERE id = :id")


async def _latencies(engines: dict[str, AsyncEngine], statements: int) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {way: [] for way in engines}
    for number in range(statements):
        for way, engine in engines.items():
            began = time.perf_counter()
            async with engine.begin() as connection:
                await connection.execute(_READ, {"id": number % 1000 + 1})
            took[way].append((time.perf_counter() - began) * 1000)
    return took


def _engines(url: str, bouncer: pgbouncer.PgBouncer) -> dict[str, AsyncEngine]:
    return {
        "direct": create_engine(url, pool_size=1),
        "direct, uncached": create_engine(url, pool_size=1, pooler=Pooler.PGBOUNCER),
        "through pgbouncer": create_engine(bouncer.url(url), pool_size=1, pooler=Pooler.PGBOUNCER),
    }


async def run(messages: int, rounds: int, statements: int) -> None:
    binary = pgbouncer.find_binary()
    if binary is None:
        raise SystemExit("needs the pgbouncer binary (Debian package pgbouncer)")
    async with embedded_database() as url:
        engine = create_engine(url, pool_size=1)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()
        api = Sandbox(KEYS, statuses=False)
        base_url = await api.start()
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        try:
            async with pgbouncer.running(url, binary) as bouncer:
                for number in range(rounds):
                    for index, way in enumerate(WAYS):
                        copy = await _database(url, f"bench_{number}_{index}", "outbox")
                        rates[way].append(await _round(way, copy, bouncer, base_url, messages))
                engines = _engines(copy, bouncer)
                try:
                    took = await _latencies(engines, statements)
                finally:
                    for engine in engines.values():
                        await engine.dispose()
        finally:
            await api.stop()
    direct = statistics.median(rates["direct"])
    print(f"{messages} messages per round, {rounds} rounds, load {os.getloadavg()[0]:.1f}")
    for way in WAYS:
        rate = statistics.median(rates[way])
        every = ", ".join(f"{r:.0f}" for r in rates[way])
        print(f"{way:<20} {rate:7.0f} msg/s  ({rate / direct:.2f} of direct; rounds: {every})")
    print(
        f"{statements} one-row read transactions per way, interleaved, load {os.getloadavg()[0]:.1f}"
    )
    for way in WAYS:
        median = statistics.median(took[way])
        p90 = statistics.quantiles(took[way], n=10)[-1]
        print(f"{way:<20} median {median:.2f} ms, p90 {p90:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", type=int, default=2000)
    args = parser.parse_args()
    logconfig.configure("warning")  # the daemon's per-message lines would dominate the timing
    asyncio.run(run(args.messages, args.rounds, args.statements))


if __name__ == "__main__":
    main()
