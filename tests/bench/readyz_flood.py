"""Webhook latency with and without a `/readyz` flood (issue 19 section 2; not a test).

    python -m tests.bench.readyz_flood [--posts 300] [--clients 20]

Starts an embedded PostgreSQL and `outbox run --role web` in this process, posts webhooks one
after another and prints their p50 and p95, first alone, then while another process floods
`/readyz` with `--clients` concurrent clients: with readiness checked on every request
(`readiness_interval = 0`, what every `/readyz` did before), with the default cache (5 s), and
with the cache and the admin endpoints on their own listener (`admin_listen`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import aiohttp

from outbox import app
from outbox.config import ChannelConfig, HttpConfig, Secret, Settings, WebhookAuth
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from outbox.domain.models import Dialect

BODY = b'{"object": "whatsapp_business_account", "entry": []}'


async def _webhooks(url: str, posts: int) -> tuple[float, float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(posts):
            began = time.perf_counter()
            async with session.post(url, data=BODY) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - began)
    cuts = statistics.quantiles(latencies, n=20)
    return statistics.median(latencies) * 1000, cuts[18] * 1000


async def _run(settings: Settings, posts: int, clients: int | None) -> str:
    stop = asyncio.Event()
    started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()
    daemon = asyncio.create_task(
        app.run(settings, stop, roles={"web"}, on_started=started.set_result)
    )
    ports = await started
    url = f"http://127.0.0.1:{ports.http_port}/webhooks/bench"
    flood = None
    if clients is not None:
        readyz = f"http://127.0.0.1:{ports.admin_port or ports.http_port}/readyz"
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.readyz_flood", "--flood", readyz,
            "--clients", str(clients), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(1)  # the flood is under way
    p50, p95 = await _webhooks(url, posts)
    served = ""
    if flood is not None:
        flood.terminate()
        out, _ = await flood.communicate()
        served = out.decode().strip()
    stop.set()
    await daemon
    return f"webhook p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  {served}"


async def main(posts: int, clients: int) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        channel = ChannelConfig(
            "bench", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 80.0,
            webhook_auth=WebhookAuth.NONE,
        )  # fmt: skip
        base = Settings(database_url=dsn, channels=(channel,), http=HttpConfig("127.0.0.1", 0))

        def http(**changes: Any) -> Settings:
            return dataclasses.replace(base, http=dataclasses.replace(base.http, **changes))

        uncached = http(readiness_interval=timedelta(0))
        rows = [
            ("no flood", base, None),
            ("/readyz flood, checked per request", uncached, clients),
            ("/readyz flood, cached (5 s)", base, clients),
            ("/readyz flood, cached, admin listener", http(admin_listen="127.0.0.1:0"), clients),
        ]
        for name, settings, flood in rows:
            print(f"{name:<40} {await _run(settings, posts, flood)}", flush=True)


async def flood(url: str, clients: int) -> None:
    """`clients` loops of GET /readyz until terminated; prints requests per second."""
    served = 0
    began = time.perf_counter()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal served
        while True:
            async with session.get(url) as response:
                await response.read()
            served += 1

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    import signal

    loop.add_signal_handler(signal.SIGTERM, done.set)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(clients)]
        await done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"/readyz served {served / (time.perf_counter() - began):,.0f}/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--flood", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        asyncio.run(flood(args.flood, args.clients))
    else:
        asyncio.run(main(args.posts, args.clients))
