"""Webhook receiver benchmark: latency under load, then time to reconcile (not a test).

    python -m tests.bench.webhooks [--bodies 20000] [--rate 2000] [--roles web,reconciler]
    python -m tests.bench.webhooks --serve 30 --port 18080 --roles web &
    wrk -t1 -c20 -d10s --latency -s tests/bench/post_status.lua http://127.0.0.1:18080/webhooks/bench

Starts an embedded PostgreSQL and `outbox run --role web,reconciler` in this process, seeds one
accepted message per status body, posts Cloud status bodies at a fixed offered rate from another
process (open loop, as 360dialog does) and prints bodies/s, answer latency percentiles, and how
long the reconciler took to apply them all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

# Every webhook must vouch for itself (issue 19): the channel's Basic credentials.
_USER, _PASSWORD = "bench", "bench-password"
_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Basic " + base64.b64encode(f"{_USER}:{_PASSWORD}".encode()).decode(),
}

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


class _Refused(Exception):
    pass


async def _client(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], latencies: list[float]
) -> None:
    while bodies:
        body = bodies.pop()
        began = time.perf_counter()
        async with session.post(url, data=body, headers=_HEADERS) as r:
            await r.read()
            if r.status != 200:
                # The offered rate is beyond the receiver (a 503 sheds it): said, not waited for.
                raise _Refused(f"receiver answered {r.status}: offer a lower --rate")
        latencies.append(time.perf_counter() - began)


async def main(count: int, rate: float, roles: set[str], serve: float | None, port: int) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        connection = await asyncpg.connect(dsn)
        # Rows as the daemon leaves them (the owner's fixture path, migration 0020).
        await connection.execute("SET outbox.trusted_insert = 'on'")
        await connection.execute(_SEED, count)
        settings = Settings(
            database_url=dsn,
            channels=(
                ChannelConfig(
                    "bench",
                    Dialect.CLOUD,
                    "http://127.0.0.1:9",
                    Secret("k"),
                    80.0,
                    webhook_username=Secret(_USER),
                    webhook_password=Secret(_PASSWORD),
                ),
            ),
            http=HttpConfig("127.0.0.1", port),
            reconciler=ReconcilerConfig(poll_interval=timedelta(milliseconds=100)),
        )
        stop = asyncio.Event()
        started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()
        daemon = asyncio.create_task(
            app.run(settings, stop, roles=roles, on_started=started.set_result)
        )
        url = f"http://127.0.0.1:{(await started).http_port}/webhooks/bench"
        if serve is not None:
            # For an outside load generator, e.g. wrk -s tests/bench/post_status.lua URL
            print(f"serving {url} for {serve:.0f} s", flush=True)
            await asyncio.sleep(serve)
            stop.set()
            await daemon
            return
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
            "--rate",
            str(rate),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await client.communicate()
        if client.returncode != 0:
            stop.set()
            await daemon
            await connection.close()
            raise SystemExit(out.decode().strip() or f"the load process exited {client.returncode}")
        while "reconciler" in roles and await connection.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM outbox.messages WHERE state <> 'delivered'"
        ):
            await asyncio.sleep(0.05)
        reconciled = time.perf_counter() - began
        stop.set()
        await daemon
        await connection.close()
    print(out.decode().rstrip())
    print(f"all applied after    {reconciled:.2f} s ({count / reconciled:,.0f} statuses/s)")


async def load(url: str, count: int, rate: float) -> None:
    """Open loop, as 360dialog posts: bodies leave at `rate` per second whatever the answers."""
    bodies = [_body(n, "delivered") for n in range(1, count + 1)]
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000)) as session:
        began = time.perf_counter()
        tasks = []
        for i, body in enumerate(bodies):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_client(session, url, [body], latencies)))
        try:
            await asyncio.gather(*tasks)
        except (_Refused, aiohttp.ClientError) as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            print(exc)
            raise SystemExit(1) from None
        posted = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    print(f"bodies posted        {count} at {rate:,.0f}/s offered")
    print(f"receiver throughput  {count / posted:,.0f} bodies/s ({posted:.2f} s)")
    print(
        f"answer latency       p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000, help="bodies offered per second")
    parser.add_argument("--roles", default="web,reconciler", help="the daemon's roles")
    parser.add_argument("--serve", type=float, metavar="SECONDS", help="only serve, this long")
    parser.add_argument("--port", type=int, default=0, help="the receiver's port")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(load(args.client, args.bodies, args.rate))
    else:
        roles = set(args.roles.split(","))
        asyncio.run(main(args.bodies, args.rate, roles, args.serve, args.port))
