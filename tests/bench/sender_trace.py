"""Where a sender's slots and claim rounds spend their time (not a test).

    python -m tests.bench.sender_trace [--messages 20000] [--channels 1] [--latency-ms 0]
        [--all-on-one] [--templates]

Queues --messages rows over --channels channels (or all on the first; with --templates, each a
template, as a campaign's are), then runs the real
daemon (`outbox run --role sender`, the same code and defaults as production) in a child
process whose claim round, flights and store calls are wrapped with timers, against the API
imitation of `tests.bench.fake_api`, until every row is answered. Prints per store call its
count and p50/p90 wall time (in the event loop: queueing behind other tasks included), the claim
rounds (rows each, slots free at its start), and the drain: messages/s and the mean number of
requests in flight against the 200 slots, as flights (claimed to answered) and as requests
(`ApiClient.send` alone: the difference is the time a flight spends outside its request). `OUTBOX_BENCH_PROFILE=prefix` has py-spy sample the
child as in the other benchmarks (raw folded stacks in `prefix-<pid>.txt`).

Issue 16 found with it: the one-channel drain spends 97 % of its time in claim rounds with 79 of
200 slots busy on average, and the sender's event loop is over 90 % busy: the drain is bound by
the sender's CPU per message, not by the slots.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import itertools
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from tests.bench.scale import _ENQUEUE, _api, write_config
from tests.bench.throughput import _free_port, _profile

_Round = tuple[float, float, int, int]  # started, ended, free slots at the start, rows claimed


def _instrument() -> Callable[[], None]:
    """Wrap the sender's claim round, flights and store calls; returns the report."""
    from outbox.db import claims, messages
    from outbox.http import api_client
    from outbox.services import flights, sender, slots

    rounds: list[_Round] = []
    starts: list[float] = []
    lands: list[float] = []
    spent: dict[str, list[float]] = defaultdict(list)

    def timed(owner: Any, name: str) -> None:
        call = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await call(*args, **kwargs)
            finally:
                spent[name].append(time.monotonic() - started)

        setattr(owner, name, wrapper)

    claim_round = sender.Sender._claim_round

    async def traced_round(self: Any) -> tuple[int, float | None]:
        started, free = time.monotonic(), self._slots.free()
        result: tuple[int, float | None] = await claim_round(self)
        rounds.append((started, time.monotonic(), free, result[0]))
        return result

    sender.Sender._claim_round = traced_round  # type: ignore[method-assign]
    start, landed = flights.Flights.start, flights.Flights.landed

    def traced_start(self: Any, *args: Any) -> None:
        starts.append(time.monotonic())
        start(self, *args)

    def traced_landed(self: Any, *args: Any) -> None:
        lands.append(time.monotonic())
        landed(self, *args)

    flights.Flights.start = traced_start  # type: ignore[method-assign,assignment]
    flights.Flights.landed = traced_landed  # type: ignore[method-assign,assignment]
    for name in ("claim_many", "due_channels", "complete"):
        timed(messages.MessageStore, name)
    for name in ("lock_buckets", "read_claimed"):
        timed(claims, name)
    timed(api_client.ApiClient, "send")  # the request alone, against a flight's whole time
    timed(slots.Slots, "due")  # a round's wait for its channels (a look, or its hot ones)

    def report() -> None:
        for name, seconds in spent.items():
            ordered = sorted(seconds)
            print(
                f"{name:<14} n={len(ordered):>5}  p50 {ordered[len(ordered) // 2] * 1000:6.1f} ms"
                f"  p90 {ordered[int(len(ordered) * 0.9)] * 1000:6.1f} ms"
                f"  in all {sum(ordered):6.2f} s"
            )
        busy = [r for r in rounds if r[3] > 0]
        if not busy or not lands:
            return
        print(
            f"claim rounds {len(rounds)}, {len(busy)} with rows: "
            f"{statistics.mean(r[3] for r in busy):.1f} rows each, "
            f"{statistics.median(r[2] for r in busy)} slots free at the start (p50), "
            f"{statistics.median((r[1] - r[0]) * 1000 for r in busy):.1f} ms each (p50)"
        )
        flight = statistics.mean(spent["send"]) * len(lands) / (lands[-1] - starts[0])
        print(f"requests (ApiClient.send) in flight on average: {flight:.1f}")
        events = sorted([(t, 1) for t in starts] + [(t, -1) for t in lands])
        in_flight, area = 0, 0.0
        for (at, step), (after, _) in itertools.pairwise(events):
            in_flight += step
            area += in_flight * (after - at)
        span = events[-1][0] - events[0][0]
        claiming = sum(r[1] - r[0] for r in rounds) / span
        print(
            f"drain: {len(lands):,} sent in {span:.2f} s, {len(lands) / span:,.0f} msg/s, "
            f"{area / span:.1f} requests in flight on average, {claiming:.0%} of the time "
            "in claim rounds"
        )

    return report


def _child(config: str) -> None:
    atexit.register(_instrument())
    from outbox.cli import main

    main(["run", "--config", config, "--role", "sender"])


async def _drive(args: argparse.Namespace) -> None:
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        port = _free_port()
        api = await _api(port, args.latency_ms)
        config = Path(args.workdir) / "trace.toml"
        write_config(config, dsn, f"http://127.0.0.1:{port}", args.channels)
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(_ENQUEUE, args.messages, args.channels, args.all_on_one)
            if args.templates:  # a campaign: each claimed channel looks its template up
                await connection.execute(_TEMPLATES)
            await connection.execute("VACUUM ANALYZE outbox.messages")
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.sender_trace", "--child", str(config),
                env={**os.environ, "BENCH_KEY": "k"},
            )  # fmt: skip
            _profile(child.pid)
            left = "SELECT count(*) FROM outbox.messages WHERE state IN ('queued', 'sending')"
            while await connection.fetchval(left):  # noqa: ASYNC110 - another process's rows
                await asyncio.sleep(0.5)
            child.terminate()
            await child.wait()
        finally:
            api.terminate()
            await api.wait()
            await connection.close()


_TEMPLATES = """UPDATE outbox.messages SET payload =
'{"type": "template", "template": {"name": "order_update", "language": {"code": "en"}}}'"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--all-on-one", action="store_true")
    parser.add_argument("--templates", action="store_true", help="template rows, not text")
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
    else:
        asyncio.run(_drive(args))


if __name__ == "__main__":
    main()
