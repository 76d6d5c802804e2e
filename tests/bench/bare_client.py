"""What a bare aiohttp client gets from the API imitation at the sender's concurrency (not a test).

    python -m tests.bench.bare_client [--latency-ms 50] [--requests 20000] [--in-flight 200]
        [--work-us 0,200]

Posts --requests send requests, --in-flight at a time, to `tests.bench.fake_api` in its own
process, once per --work-us value: each request's task then spends that many microseconds of
the event loop's time (a busy wait), as a sender's per-message work would. Prints requests/s
and the request time's p50/p90: the latency the loop's own work adds to every request, which
bounds what a one-loop sender can reach of the latency bound (README "Performance").
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import uvloop

from tests.bench.scale import _api
from tests.bench.throughput import _free_port, _stop

_BODY = b'{"messaging_product":"whatsapp","to":"4915100000001","type":"text","text":{"body":"x"}}'
_HEADERS = {"Content-Type": "application/json", "D360-API-KEY": "k"}


async def _run(args: argparse.Namespace, work: float) -> str:
    port = _free_port()
    api = await _api(port, args.latency_ms)
    times: list[float] = []
    try:
        slots = asyncio.Semaphore(args.in_flight)
        connector = aiohttp.TCPConnector(limit=2 * args.in_flight)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with slots:
                    began = time.monotonic()
                    url = f"http://127.0.0.1:{port}/messages"
                    async with session.post(url, data=_BODY, headers=_HEADERS) as response:
                        await response.read()
                    times.append(time.monotonic() - began)
                    until = time.monotonic() + work
                    while time.monotonic() < until:
                        pass

            began = time.monotonic()
            await asyncio.gather(*(one() for _ in range(args.requests)))
            span = time.monotonic() - began
    finally:
        await _stop([api])
    times.sort()
    p50, p90 = times[len(times) // 2] * 1000, times[int(len(times) * 0.9)] * 1000
    return (
        f"{work * 1e6:4.0f} µs of work a message: {len(times) / span:,.0f} requests/s, "
        f"request p50 {p50:.1f} ms, p90 {p90:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument(
        "--work-us", type=lambda s: [float(n) for n in s.split(",") if n], default=[0.0, 200.0]
    )
    arguments = parser.parse_args()
    for microseconds in arguments.work_us:
        print(uvloop.run(_run(arguments, microseconds / 1e6)), flush=True)
