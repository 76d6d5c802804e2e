"""/metrics is rendered off the event loop (issue 16): a partner's thousands of channels take a
second or more to render, and the webhook receiver and the sender share the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from outbox.http.server import create_admin_app
from tests.bench.throughput import _free_port

RENDER = 1.0  # seconds one scrape takes to render


class _Slow(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        time.sleep(RENDER)  # the CPU a huge registry costs, as one blocking call
        yield GaugeMetricFamily("slow", "A registry that takes a second to render.", value=1)


async def _ready() -> str | None:
    return None


async def test_a_slow_scrape_leaves_the_event_loop_free() -> None:
    registry = CollectorRegistry()
    registry.register(_Slow())
    runner = web.AppRunner(create_admin_app(registry, _ready))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> tuple[str, float]:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    return await response.text(), time.monotonic()

            scrape = asyncio.create_task(get("/metrics"))
            await asyncio.sleep(0.2)  # the scrape is rendering
            beat = time.monotonic()
            await asyncio.sleep(0.01)
            loop_lag = time.monotonic() - beat
            _, healthy_at = await get("/healthz")
            text, scraped_at = await scrape
    finally:
        await runner.cleanup()
    assert "slow 1.0" in text
    # The loop ran on while the scrape rendered: a timer fired on time and /healthz was
    # answered before the scrape was.
    assert loop_lag < RENDER / 2, loop_lag
    assert healthy_at < scraped_at
