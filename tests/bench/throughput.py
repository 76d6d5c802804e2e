"""Send-path benchmark: drain rate, insert-to-request latency, memory, correctness (not a test).

    python -m tests.bench.throughput [--messages 20000] [--in-flight 500] [--big 200000]

Starts everything itself: an embedded PostgreSQL, the minimal API imitation
(`tests/bench/fake_api.py`) in its own process, and `outbox run --role sender` processes with
every sending rule active (window lookup, order per recipient, shared rate limit, breaker).
Prints one table:
- drain rate of a backlog of --messages rows at 0 ms and at 50 ms API latency (1 process),
  and with 2 and 3 processes at 0 ms;
- insert-to-request latency p50/p99 at a steady 200 messages/s (one INSERT per message);
- peak resident memory of the sender process after --messages and after --big rows;
- correctness: no row requested twice, every row accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from tests.support import busiest_second

_ENQUEUE = """
WITH rows AS (
    SELECT '49151' || lpad((g + $2)::text, 8, '0') AS recipient, g FROM generate_series(1, $1) AS g
), inbound AS (
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT 'bench', recipient, now() - interval '1 minute' FROM rows
    ON CONFLICT DO NOTHING
)
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT 'bench', recipient, jsonb_build_object('type', 'text', 'text', jsonb_build_object('body',
       'Your order ' || g || ' has shipped'))
FROM rows
"""


@dataclass
class Drain:
    processes: int
    latency_ms: float
    messages: int
    seconds: float
    duplicates: int
    accepted: int
    peak_rss_mb: float
    busiest_second: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(dsn: str, api: str, in_flight: int, path: Path, rate: float = 1_000_000) -> None:
    path.write_text(
        f"""
database_url = {json.dumps(dsn)}
log_level = "warning"
[sender]
max_in_flight = {in_flight}
batch_size = {in_flight}
[[channels]]
id = "bench"
dialect = "cloud"
base_url = {json.dumps(api)}
api_key_env = "BENCH_KEY"
rate_per_second = {rate}
"""
    )


async def _api(port: int, latency_ms: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.fake_api", "--port", str(port),
        "--latency-ms", str(latency_ms),
    )  # fmt: skip
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return process
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("the API imitation did not start")


async def _senders(
    config: Path, count: int, *, cwd: Path | None = None
) -> list[asyncio.subprocess.Process]:
    env = {**os.environ, "BENCH_KEY": "k"}
    senders = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox",
            "run",
            "--config",
            str(config),
            "--role",
            "sender",
            env=env,
            cwd=cwd,  # another checkout's outbox (an A/B in one run), or this one
        )
        for _ in range(count)
    ]
    _profile(senders[0].pid)
    return senders


def _profile(pid: int | None) -> None:
    """OUTBOX_BENCH_PROFILE=prefix: py-spy samples the first sender of each run for
    OUTBOX_BENCH_PROFILE_SECONDS (default 10) into prefix-<pid>.txt (raw folded stacks)."""
    prefix = os.environ.get("OUTBOX_BENCH_PROFILE")
    if not prefix or pid is None:
        return
    seconds = os.environ.get("OUTBOX_BENCH_PROFILE_SECONDS", "10")
    spy = str(Path(sys.executable).with_name("py-spy"))
    subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", seconds, "--rate", "250",
         "--format", "raw", "--nonblocking", "-o", f"{prefix}-{pid}.txt"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _stop(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.terminate()
    await asyncio.gather(*(p.wait() for p in processes))


async def _log(session: aiohttp.ClientSession, api: str) -> list[tuple[str, float]]:
    async with session.get(f"{api}/log") as response:
        return [(k, t) for k, t in await response.json()]


async def drain(
    dsn: str,
    workdir: Path,
    *,
    messages: int,
    latency_ms: float,
    processes: int,
    in_flight: int,
    rate: float = 1_000_000,
) -> Drain:
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = await _api(port, latency_ms)
    config = workdir / "outbox.toml"
    _config(dsn, api_url, in_flight, config, rate)
    connection = await asyncpg.connect(dsn)
    await connection.execute("TRUNCATE outbox.messages, outbox.contacts")
    await connection.execute(_ENQUEUE, messages, 0)
    await connection.execute("VACUUM ANALYZE outbox.messages")
    senders = await _senders(config, processes)
    try:
        async with aiohttp.ClientSession() as session:
            while await connection.fetchval(  # noqa: ASYNC110  (other processes' work)
                "SELECT count(*) FROM outbox.messages WHERE state IN ('queued', 'sending')"
            ):
                await asyncio.sleep(0.2)
            log = await _log(session, api_url)
        peak = max(_peak_rss_mb(p.pid) for p in senders)
    finally:
        await _stop(senders)
        await _stop([api])
    accepted = await connection.fetchval(
        "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'"
    )
    await connection.close()
    times = sorted(t for _, t in log)
    keys = Counter(k for k, _ in log)
    return Drain(
        processes,
        latency_ms,
        messages,
        times[-1] - times[0],
        sum(n - 1 for n in keys.values() if n > 1),
        int(accepted),
        peak,
        busiest_second(times),
    )


async def steady_latency(
    dsn: str, workdir: Path, *, rate: float, seconds: float, in_flight: int
) -> tuple[float, float, int]:
    """Insert one row per transaction at `rate`; the time from commit to the API's receipt."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = await _api(port, 0.0)
    config = workdir / "outbox.toml"
    _config(dsn, api_url, in_flight, config)
    connection = await asyncpg.connect(dsn)
    await connection.execute("TRUNCATE outbox.messages, outbox.contacts")
    await connection.execute(
        "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
        "SELECT 'bench', '49152' || lpad(g::text, 8, '0'), now() "
        "FROM generate_series(1, $1) AS g",
        int(rate * seconds),
    )
    senders = await _senders(config, 1)
    committed: dict[str, float] = {}
    try:
        await asyncio.sleep(2.0)  # the sender is up and listening
        began = time.monotonic()
        for n in range(1, int(rate * seconds) + 1):
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = await connection.fetchval(
                "INSERT INTO outbox.messages (channel, recipient, payload) VALUES ('bench', $1, "
                """'{"type":"text","text":{"body":"otp"}}') RETURNING id""",
                f"49152{n:08d}",
            )
            committed[f"outbox:{message_id}"] = time.time()
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as session:
            log = await _log(session, api_url)
    finally:
        await _stop(senders)
        await _stop([api])
        await connection.close()
    delays = sorted(arrived - committed[key] for key, arrived in log if key in committed)
    q = statistics.quantiles(delays, n=100)
    return q[49] * 1000, q[98] * 1000, len(delays)


async def main(messages: int, big: int, in_flight: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    async with embedded_database() as dsn:
        engine = create_engine(dsn, pool_size=1)
        await migrate.upgrade(engine)
        await engine.dispose()
        runs = [
            await drain(dsn, workdir, messages=messages, latency_ms=0, processes=1,
                        in_flight=in_flight),
            await drain(dsn, workdir, messages=messages, latency_ms=50, processes=1,
                        in_flight=in_flight),
            await drain(dsn, workdir, messages=messages, latency_ms=0, processes=2,
                        in_flight=in_flight),
            await drain(dsn, workdir, messages=messages, latency_ms=0, processes=3,
                        in_flight=in_flight),
        ]  # fmt: skip
        p50, p99, seen = await steady_latency(
            dsn, workdir, rate=200, seconds=10, in_flight=in_flight
        )
        large = await drain(
            dsn, workdir, messages=big, latency_ms=0, processes=1, in_flight=in_flight
        )
        limited = await drain(
            dsn, workdir, messages=5000, latency_ms=0, processes=3, in_flight=in_flight, rate=500
        )
    print(f"\n{'run':<34}{'messages/s':>12}{'seconds':>9}{'peak RSS MB':>13}{'dupes':>7}")
    for run in [*runs, large]:
        label = f"{run.messages:,} rows, {run.latency_ms:.0f} ms API, {run.processes} proc"
        print(
            f"{label:<34}{run.rate:>12,.0f}{run.seconds:>9.2f}{run.peak_rss_mb:>13.1f}"
            f"{run.duplicates:>7}"
        )
    print(f"insert-to-request at 200 msg/s ({seen} rows): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(
        f"rate limit 500/s (burst 50), 5,000 rows, 3 processes: {limited.rate:,.0f}/s "
        f"({limited.rate / 500:.1%} of the rate), busiest 1-second window {limited.busiest_second}"
    )
    ok = all(r.duplicates == 0 and r.accepted == r.messages for r in [*runs, large, limited])
    print(f"correctness: {'no id requested twice, every row accepted' if ok else 'FAILED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--big", type=int, default=200000)
    parser.add_argument("--in-flight", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.big, args.in_flight))
