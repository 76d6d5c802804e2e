"""Peak RSS of a sender that starts with many channels and no rows (not a test).

    python -m tests.bench.start_memory [--channels 1,10000] [--seconds 10]

For each count, in a fresh embedded PostgreSQL: writes a config with that many channels (as
`tests.bench.scale` does), runs `outbox run --role sender` for --seconds (start-up: the file
read, its channels mirrored into the registry, the registry read, every channel started) and
prints the process's peak RSS (VmHWM); then once more on the same database, as a restart finds
it (the registry holding the file's channels already). The drains of `tests.bench.scale` report the peak with
rows sent; this one is the start alone, where a partner's thousands of channels are all read
at once.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import uvloop

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from tests.bench.scale import write_config
from tests.bench.throughput import _peak_rss_mb, _senders, _stop


async def _peaks(channels: int, seconds: float, workdir: Path) -> list[float]:
    """The first start's peak and a restart's."""
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        config = workdir / f"start{channels}.toml"
        write_config(config, dsn, "http://127.0.0.1:9", channels)  # no row: no request
        peaks = []
        for _ in range(2):
            [sender] = await _senders(config, 1)
            try:
                await asyncio.sleep(seconds)
                peaks.append(_peak_rss_mb(sender.pid))
            finally:
                await _stop([sender])
        return peaks


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbox-start-"))
    try:
        for channels in args.channels:
            first, again = await _peaks(channels, args.seconds, workdir)
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
    uvloop.run(main(parser.parse_args()))
