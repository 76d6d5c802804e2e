"""Peak RSS of a sender that starts with many channels and no rows (not a test).

    python -m tests.bench.start_memory [--channels 1,10000] [--seconds 10] [--registry]

For each count, in a fresh embedded PostgreSQL: writes a config with that many channels (as
`tests.bench.scale` does), runs `outbox run --role sender` for --seconds (start-up: the file
read, its channels mirrored into the registry, the registry read, every channel started) and
prints the process's peak RSS (VmHWM); then once more on the same database, as a restart finds
it (the registry holding the file's channels already). With --registry the channels are the
registry's own entries (a partner's numbers, their keys referenced from the environment), not
the file's. The drains of `tests.bench.scale` report the peak with
rows sent; this one is the start alone, where a partner's thousands of channels are all read
at once.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import uvloop
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.registry import ChannelRegistryStore
from outbox.demo import embedded_database
from tests.bench.scale import channel_id, write_config
from tests.bench.throughput import _peak_rss_mb, _senders, _stop


async def _register(engine: AsyncEngine, dsn: str, channels: int) -> None:
    """`channels` registry entries like the file's (one added, the rest copies of it)."""
    store = ChannelRegistryStore(engine, None, environ={"BENCH_KEY": "k"})
    plain = {"dialect": "cloud", "base_url": "http://127.0.0.1:9", "rate_per_second": 1e6}
    await store.add_held(channel_id(0), plain, {"api_key": ("env", "BENCH_KEY")}, True)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(_COPIES, channel_id(0), channels - 1)
    finally:
        await connection.close()


_COPIES = """
    INSERT INTO outbox.channels
    SELECT (jsonb_populate_record(NULL::outbox.channels, to_jsonb(c)
            || jsonb_build_object('id', 'c' || lpad(n::text, 5, '0')))).*
    FROM outbox.channels AS c, generate_series(1, $2) AS n WHERE c.id = $1
"""


async def _peaks(channels: int, seconds: float, workdir: Path, registry: bool) -> list[float]:
    """The first start's peak and a restart's."""
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        if registry:
            await _register(engine, dsn, channels)
        await engine.dispose()
        config = workdir / f"start{channels}.toml"
        # No row: no request.
        write_config(config, dsn, "http://127.0.0.1:9", 0 if registry else channels)
        peaks = []
        for _ in range(2):
            [sender] = await _senders(config, 1)
            try:
                await asyncio.sleep(seconds)
                peaks.append(_peak_rss_mb(sender.pid))
            finally:
                await _stop([sender])
        connection = await asyncpg.connect(dsn)
        try:  # each channel the sender started has its bucket row
            started = await connection.fetchval("SELECT count(*) FROM outbox.channel_state")
        finally:
            await connection.close()
        if started != channels:
            raise SystemExit(f"{started} of {channels} channels started")
        return peaks


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbox-start-"))
    try:
        for channels in args.channels:
            first, again = await _peaks(channels, args.seconds, workdir, args.registry)
            print(
                f"{channels:>6,} channels: peak RSS {first:.1f} MB, restarted {again:.1f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--channels", type=lambda s: [int(n) for n in s.split(",") if n], default=[1, 10000]
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--registry", action="store_true", help="the registry's channels")
    uvloop.run(main(parser.parse_args()))
