"""Webhook receiver benchmark: latency under load, then time to reconcile (not a test).

    python -m tests.bench.webhooks [--bodies 20000] [--concurrency 100]

Starts an embedded PostgreSQL and `outbox run --role web,reconciler` in this process, seeds one
accepted message per status body, fires Cloud status bodies at the receiver from `concurrency`
clients and prints bodies/s, answer latency percentiles, and how long the reconciler took to
apply them all.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta

import aiohttp
import asyncpg
import orjson

from outbox import app
from outbox.config import ChannelConfig, HttpConfig, ReconcilerConfig, Secret, Settings
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from outbox.domain.models import Dialect

ROLES = {"web", "reconciler"}
_SEED = """
INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, accepted_at)
SELECT 'bench', '49151' || lpad(g::text, 8, '0'), '{"type":"text","text":{"body":"x"}}',
       'accepted', 'wamid.bench' || g, now()
FROM generate_series(1, $1) AS g
"""


def _body(n: int, status: str) -> bytes:
    item = {
        "id": f"wamid.bench{n}",
        "recipient_id": f"49151{n:08d}",
        "status": status,
        "timestamp": str(int(time.time())),
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": "1"},
        "statuses": [item],
    }
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


async def _client(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], latencies: list[float]
) -> None:
    while bodies:
        body = bodies.pop()
        began = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                raise SystemExit(f"receiver answered {r.status}")
        latencies.append(time.perf_counter() - began)


async def main(count: int, concurrency: int) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        connection = await asyncpg.connect(dsn)
        await connection.execute(_SEED, count)
        settings = Settings(
            database_url=dsn,
            channels=(
                ChannelConfig("bench", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 80.0),
            ),
            http=HttpConfig("127.0.0.1", 0),
            reconciler=ReconcilerConfig(poll_interval=timedelta(milliseconds=100)),
        )
        stop = asyncio.Event()
        started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()
        daemon = asyncio.create_task(
            app.run(settings, stop, roles=ROLES, on_started=started.set_result)
        )
        port = (await started).http_port
        url = f"http://127.0.0.1:{port}/webhooks/bench"
        began = time.perf_counter()
        # The load comes from another process, so it does not share this one's CPU.
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.webhooks",
            "--client",
            url,
            "--bodies",
            str(count),
            "--concurrency",
            str(concurrency),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await client.communicate()
        while await connection.fetchval(  # noqa: ASYNC110  (waiting on another process's work)
            "SELECT count(*) FROM outbox.messages WHERE state <> 'delivered'"
        ):
            await asyncio.sleep(0.05)
        reconciled = time.perf_counter() - began
        stop.set()
        await daemon
        await connection.close()
    print(out.decode().rstrip())
    print(f"all applied after    {reconciled:.2f} s ({count / reconciled:,.0f} statuses/s)")


async def load(url: str, count: int, concurrency: int) -> None:
    bodies = [_body(n, "delivered") for n in range(1, count + 1)]
    latencies: list[float] = []
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(
            *(_client(session, url, bodies, latencies) for _ in range(concurrency))
        )
    posted = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    print(f"bodies posted        {count} from {concurrency} concurrent clients")
    print(f"receiver throughput  {count / posted:,.0f} bodies/s ({posted:.2f} s)")
    print(
        f"answer latency       p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(load(args.client, args.bodies, args.concurrency))
    else:
        asyncio.run(main(args.bodies, args.concurrency))
