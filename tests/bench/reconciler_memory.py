"""Reconciler memory under bodies made of many small statuses (not a test).

    python -m tests.bench.reconciler_memory [--bodies 16] [--batch-bytes N]

A 1 MiB webhook body (the receiver's limit) holds some 30,000 minimal statuses. This starts an
embedded PostgreSQL, stores `--bodies` such bodies through the receiver's store (so each row
records its size as received), starts `outbox run --role reconciler` in its own process, waits
until every row is processed and prints the reconciler's peak RSS (VmHWM) and how long it took.
The statuses name no known message, so every one is parked, as an attacker's would be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.webhook_store import WebhookEventStore
from outbox.demo import embedded_database
from outbox.http.webhooks import MAX_BODY_BYTES
from tests.bench.throughput import _peak_rss_mb

_STATUS_BYTES = len(b'{"id":"w.00000000","status":"read"},')


def body(n: int) -> tuple[str, int]:
    """A body just under 1 MiB of minimal statuses, and how many it holds."""
    count = (MAX_BODY_BYTES - 64) // _STATUS_BYTES
    statuses = [{"id": f"w.{n:02d}{i:06d}", "status": "read"} for i in range(count)]
    text = orjson.dumps({"statuses": statuses}).decode()
    assert len(text) <= MAX_BODY_BYTES
    return text, count


def _config(dsn: str, path: Path, batch_bytes: int | None) -> None:
    budget = "" if batch_bytes is None else f"batch_bytes = {batch_bytes}\n"
    path.write_text(
        f"""
database_url = {json.dumps(dsn)}
log_level = "warning"
[reconciler]
{budget}
[[channels]]
id = "bench"
dialect = "onprem"
base_url = "http://127.0.0.1:9"
api_key_env = "BENCH_KEY"
webhook_auth = "none"
"""
    )


async def main(bodies: int, batch_bytes: int | None) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=2)
        await migrate.upgrade(engine)
        store = WebhookEventStore(engine)
        statuses = 0
        for n in range(bodies):
            text, count = body(n)
            await store.store_webhook("bench", text, authenticated=False)
            statuses += count
        await engine.dispose()
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "outbox.toml"
            _config(dsn, config, batch_bytes)
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "outbox", "run", "--config", str(config),
                "--role", "reconciler", env={**os.environ, "BENCH_KEY": "k"},
            )  # fmt: skip
            connection = await asyncpg.connect(dsn)
            try:
                while await connection.fetchval(
                    "SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL"
                ):
                    if process.returncode is not None:
                        raise SystemExit(f"the reconciler exited with {process.returncode}")
                    await asyncio.sleep(0.2)
                seconds = time.monotonic() - began
                peak = _peak_rss_mb(process.pid)
                parked = await connection.fetchval("SELECT count(*) FROM outbox.parked_statuses")
            finally:
                await connection.close()
                process.terminate()
                await process.wait()
    print(f"{'bodies':>7}{'statuses':>11}{'parked':>11}{'seconds':>9}{'peak RSS (MB)':>15}")
    print(f"{bodies:>7}{statuses:>11,}{parked:>11,}{seconds:>9.1f}{peak:>15.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=16)
    parser.add_argument("--batch-bytes", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.bodies, args.batch_bytes))
