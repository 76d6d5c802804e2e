"""Speed at any scale: outbox beside its peers, and from 1 to 10,000 channels (not a test).

    python -m tests.bench.scale [--messages 20000] [--channels 1,1000,10000]
        [--peers/--no-peers] [--fair-backlog 1000000 [--fair-spread 1] [--fair-clients]] [--steady-seconds 10]
        [--limit 60]
        [--repeat 1] [--kinds outbox,pgqueuer,pgqueuer+gc,batched,bare,bare-wire,baseline]
        [--baseline DIR]

One invocation, one embedded PostgreSQL, one API imitation (`tests/bench/fake_api.py`, its own
process), every worker in its own process, every one at 200 requests in flight:
- peers: outbox with its defaults (every sending rule active), pgqueuer (batch size 100) and a
  hand-written batched claimer with no rules (`tests/bench/peers.py`), draining --messages rows
  at 0 ms and 50 ms API latency, and (`--kinds ...,bare`) the same POSTs from a bare aiohttp
  client with no database, the most this machine and imitation give an aiohttp sender
  (`bare-wire`: through outbox's own send pool, `outbox.http.wire`, the most they give it);
  messages/s, the CPU per message of the worker, PostgreSQL and the imitation, the cores busy on
  the whole machine (`/proc/stat`: when it nears all of them, every worker is CPU-bound), ratios;
- channels: for each K in --channels, K configured channels: the --messages rows spread over
  them, and (K > 1) all on one channel among K - 1 idle ones; then idle database
  transactions/s (`pg_stat_database.xact_commit`) and idle sender CPU; then INSERT -> request
  p50/p99 at a steady 200 msg/s over random channels; the sender's peak RSS; with --baseline,
  each channel run is followed by the same run with the other checkout's sender (in turn: the
  next round starts with the other), labelled "(baseline)" and compared with its own 1 channel;
- --repeat N: every drain N times, the rounds interleaved, reported as the median with its
  range (one drain on this machine can differ from the next by 15 %);
- fairness (--fair-backlog N > 0): N rows queued on one channel (or spread over
  --fair-spread K channels: one client's many numbers), then 10 rows, 100 ms apart, on
  another: p99 INSERT -> request of the 10, and the sender's peak RSS beside N rows;
  --fair-clients: the K channels are client "big"'s, the 10 rows go to client "small", whose
  other number holds a 100,000-row backlog: the part of the requests that number gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.demo import embedded_database
from tests.bench.throughput import _free_port, _log, _peak_rss_mb, _senders, _stop

IN_FLIGHT = 200

# $1 rows over $2 channels (c00000 ...), or all on c00000 when $3; every recipient in its window.
_ENQUEUE = """
WITH rows AS (
    SELECT 'c' || lpad((CASE WHEN $3 THEN 0 ELSE g % $2 END)::text, 5, '0') AS channel,
           '49151' || lpad(g::text, 8, '0') AS recipient, g
    FROM generate_series(1, $1) AS g
), inbound AS (
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT channel, recipient, now() - interval '1 minute' FROM rows
    ON CONFLICT DO NOTHING
)
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT channel, recipient, jsonb_build_object('type', 'text', 'text', jsonb_build_object('body',
       'Your order ' || g || ' has shipped'))
FROM rows
"""


async def _api(port: int, latency_ms: float) -> asyncio.subprocess.Process:
    """The API imitation, given time to start on a loaded machine."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.fake_api", "--port", str(port),
        "--latency-ms", str(latency_ms),
    )  # fmt: skip
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return process
        except OSError:
            await asyncio.sleep(0.05)
    process.kill()
    raise SystemExit("the API imitation did not start")


async def _count(session: aiohttp.ClientSession, api: str) -> int:
    async with session.get(f"{api}/log", params={"count": "1"}) as response:
        return int(await response.text())


def channel_id(n: int) -> str:
    return f"c{n:05d}"


def write_config(
    path: Path, dsn: str, api: str, channels: int, clients: Callable[[int], str] | None = None
) -> None:
    """Sender defaults (200 in flight); rate limits far above the load. The sender serves its
    metrics (`admin_listen`), as one in production does: its gauges are refreshed from the
    database every `sample_interval`, whose cost grows with the channels. `clients` gives
    channel n's client (tenant) id."""
    entries = "".join(
        f"""
[[channels]]
id = "{channel_id(n)}"
dialect = "cloud"
base_url = {json.dumps(api)}
api_key_env = "BENCH_KEY"
rate_per_second = 1000000
"""
        + ("" if clients is None else f'client_id = "{clients(n)}"\n')
        for n in range(channels)
    )
    head = f'database_url = {json.dumps(dsn)}\nlog_level = "warning"\n'
    path.write_text(f'{head}\n[http]\nadmin_listen = "127.0.0.1:0"\n{entries}')


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _database_cpu_seconds(postmaster: int) -> float:
    """PostgreSQL's CPU: the postmaster's, its live children's, and the ended children's it
    reaped (so a backend that exits within the window still counts)."""
    fields = _stat(postmaster)
    ticks = sum(int(f) for f in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except OSError:
            continue  # ended meanwhile: reaped into the postmaster's own figures
        if int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (`/proc/stat`: all but idle and iowait)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    label: str
    messages: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # cores the worker kept busy while it drained
    db_cpu: float = 0.0  # cores PostgreSQL kept busy meanwhile
    api_cpu: float = 0.0  # cores the API imitation kept busy meanwhile
    machine: float = 0.0  # cores busy on the whole machine meanwhile (of os.cpu_count())
    duplicates: int = 0
    peak_rss_mb: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class Bench:
    def __init__(self, dsn: str, workdir: Path, limit: float, baseline: Path | None = None) -> None:
        self.dsn = dsn
        self.baseline = baseline
        self.workdir = workdir
        self.limit = limit  # seconds a drain may take: a slow one is measured on what it sent
        self.postmaster = 0  # PostgreSQL's postmaster, for its CPU (`_database_cpu_seconds`)

    async def find_postmaster(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:  # read while the backend lives: it ends with the connection
            self.postmaster = int(_stat(await connection.fetchval("SELECT pg_backend_pid()"))[1])
        finally:
            await connection.close()

    async def _reset(self, connection: asyncpg.Connection) -> None:
        await connection.execute(
            "TRUNCATE outbox.messages, outbox.contacts, outbox.channel_state, outbox.recipient_pace"
        )
        # The last run's dirty pages written now, not by a checkpoint inside the next drain.
        await connection.execute("CHECKPOINT")

    async def _enqueue(
        self, connection: asyncpg.Connection, messages: int, channels: int, one: bool
    ) -> None:
        await connection.execute(_ENQUEUE, messages, channels, one)
        await connection.execute("VACUUM ANALYZE outbox.messages")

    async def _worker(self, args: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", *args)

    async def peer(self, kind: str, messages: int, latency_ms: float) -> Run:
        """Drain `messages` jobs with outbox (1 channel), pgqueuer or the batched claimer."""
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = await _api(port, latency_ms)
        connection = await asyncpg.connect(self.dsn)
        await self._reset(connection)
        run = Run(f"{kind}, {latency_ms:.0f} ms")
        try:
            if kind.startswith("pgqueuer"):
                setup = await self._worker(
                    ["tests.bench.peers", "pgqueuer", "--setup", "--dsn", self.dsn,
                     "--messages", str(messages)]
                )  # fmt: skip
                await setup.wait()
                worker = await self._worker(
                    ["tests.bench.peers", "pgqueuer", "--dsn", self.dsn, "--api", api_url,
                     "--in-flight", str(IN_FLIGHT), *(["--outbox-gc"] if "gc" in kind else [])]
                )  # fmt: skip
                workers = [worker]
            elif kind in ("bare", "bare-wire"):
                workers = [
                    await self._worker(
                        ["tests.bench.peers", kind, "--api", api_url, "--messages",
                         str(messages), "--in-flight", str(IN_FLIGHT)]
                    )
                ]  # fmt: skip
            elif kind == "batched":
                await self._enqueue(connection, messages, 1, True)
                workers = [
                    await self._worker(
                        ["tests.bench.peers", "batched", "--dsn", self.dsn, "--api", api_url,
                         "--in-flight", str(IN_FLIGHT)]
                    )
                ]  # fmt: skip
            else:
                config = self.workdir / "peer.toml"
                write_config(config, self.dsn, api_url, 1)
                await self._enqueue(connection, messages, 1, True)
                # "baseline": the same sender from another checkout (--baseline), e.g. main.
                workers = await _senders(
                    config, 1, cwd=self.baseline if kind == "baseline" else None
                )
            run = await self._drained(connection, api_url, workers, messages, run, api=api)
        finally:
            await _stop([api])
            await connection.close()
        return run

    async def _drained(
        self,
        connection: asyncpg.Connection,
        api_url: str,
        workers: list[asyncio.subprocess.Process],
        messages: int,
        run: Run,
        *,
        keep: bool = False,
        api: asyncio.subprocess.Process,
    ) -> Run:
        pid = workers[0].pid
        cpu_before = _cpu_seconds(pid)
        async with aiohttp.ClientSession() as session:
            try:
                # CPU from the first request on: the start (imports, connections) is not counted.
                while not await _count(session, api_url) and workers[0].returncode is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                if workers[0].returncode is None:
                    cpu_before = _cpu_seconds(pid)
                db_before = db_after = _database_cpu_seconds(self.postmaster)
                api_before = api_after = _cpu_seconds(api.pid)
                busy_before = busy_after = _machine_busy_seconds()
                cpu_after, cut = cpu_before, time.monotonic() + self.limit
                while True:
                    count = await _count(session, api_url)
                    if workers[0].returncode is not None:
                        break
                    # Read while it lives: a peer exits when it has drained (and may have
                    # been reaped since the check above).
                    try:
                        cpu_after, run.peak_rss_mb = _cpu_seconds(pid), _peak_rss_mb(pid)
                    except OSError:
                        break
                    db_after = _database_cpu_seconds(self.postmaster)
                    api_after, busy_after = _cpu_seconds(api.pid), _machine_busy_seconds()
                    if count >= messages or time.monotonic() > cut:
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.3)
                log = await _log(session, api_url)
                await session.delete(f"{api_url}/log")
            finally:
                if not keep:
                    await _stop(workers)
        times = sorted(t for _, t in log)
        keys = {k for k, _ in log}
        run.messages = len(times)
        run.seconds = times[-1] - times[0] if len(times) > 1 else 0.0
        run.duplicates = len(times) - len(keys)
        run.cpu = (cpu_after - cpu_before) / run.seconds if run.seconds else 0.0
        run.db_cpu = (db_after - db_before) / run.seconds if run.seconds else 0.0
        run.api_cpu = (api_after - api_before) / run.seconds if run.seconds else 0.0
        run.machine = (busy_after - busy_before) / run.seconds if run.seconds else 0.0
        return run

    async def channels(
        self, channels: int, messages: int, one: bool, steady: float, *, baseline: bool = False
    ) -> Run:
        """Drain, then idle figures, then steady INSERT -> request, with one sender (with
        `baseline`, the sender of the --baseline checkout)."""
        label = f"{channels:,} ch, " + ("all rows on one" if one else "rows spread")
        run = Run(label + (" (baseline)" if baseline else ""))
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = await _api(port, 0.0)
        config = self.workdir / f"ch{channels}.toml"
        write_config(config, self.dsn, api_url, channels)
        connection = await asyncpg.connect(self.dsn)
        await self._reset(connection)
        await self._enqueue(connection, messages, channels, one)
        senders = await _senders(config, 1, cwd=self.baseline if baseline else None)
        try:
            run = await self._drained(
                connection, api_url, senders, messages, run, keep=True, api=api
            )
            if steady:
                await self._idle(connection, senders[0].pid, run)
                await self._steady(connection, api_url, channels, steady, run)
            run.peak_rss_mb = _peak_rss_mb(senders[0].pid)
        finally:
            await _stop(senders)
            await _stop([api])
            await connection.close()
        return run

    async def _idle(self, connection: asyncpg.Connection, pid: int, run: Run) -> None:
        commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        # A drain cut short leaves rows: take them away, let the last requests end.
        await connection.execute("DELETE FROM outbox.messages WHERE state = 'queued'")
        for _ in range(100):
            if not await connection.fetchval(
                "SELECT count(*) FROM outbox.messages WHERE state = 'sending'"
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the drain's stragglers are written
        before, cpu = await connection.fetchval(commits), _cpu_seconds(pid)
        began = time.monotonic()
        await asyncio.sleep(10.0)
        after, cpu_after = await connection.fetchval(commits), _cpu_seconds(pid)
        seconds = time.monotonic() - began
        # One of the counted transactions is this reading's own.
        run.extra["idle xact/s"] = (after - before - 1) / seconds
        run.extra["idle CPU"] = (cpu_after - cpu) / seconds

    async def _steady(
        self, connection: asyncpg.Connection, api_url: str, channels: int, seconds: float, run: Run
    ) -> None:
        rate = 200.0
        count = int(rate * seconds)
        picks = [(channel_id(random.randrange(channels)), f"49152{n:08d}") for n in range(count)]
        await connection.executemany(
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) VALUES ($1, $2, now())"
            " ON CONFLICT DO NOTHING",
            picks,
        )
        committed: dict[str, float] = {}
        began = time.monotonic()
        for n, (channel, recipient) in enumerate(picks, start=1):
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = await connection.fetchval(
                "INSERT INTO outbox.messages (channel, recipient, payload) VALUES ($1, $2, "
                """'{"type":"text","text":{"body":"otp"}}') RETURNING id""",
                channel,
                recipient,
            )
            committed[f"outbox:{message_id}"] = time.time()
        await asyncio.sleep(1.5)
        async with aiohttp.ClientSession() as session:
            log = await _log(session, api_url)
        delays = sorted(at - committed[key] for key, at in log if key in committed)
        # A row not requested by the end counts as late as the run is long (a lower bound).
        delays += [time.time() - t for key, t in committed.items() if key not in dict(log)]
        q = statistics.quantiles(sorted(delays), n=100)
        run.extra["steady p50 ms"] = q[49] * 1000
        run.extra["steady p99 ms"] = q[98] * 1000
        run.extra["steady unsent"] = len(committed) - len({k for k, _ in log} & set(committed))

    async def fairness(self, backlog: int, spread: int, clients: bool) -> Run:
        """`backlog` rows over `spread` channels (c00000, ...: one client's numbers, say);
        then 10 rows on the next channel, 100 ms apart. With `clients` the backlog's channels
        are client "big"'s, and client "small" has two numbers: the 10 rows go to one, and the
        other holds a backlog of CLIENT_BACKLOG rows from the start."""
        label = f"fairness, {backlog:,}-row backlog over {spread:,} channel(s)"
        run = Run(label + (", two clients" if clients else ""))
        small = f"c{spread:05d}"
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = await _api(port, 0.0)
        config = self.workdir / "fair.toml"
        write_config(
            config,
            self.dsn,
            api_url,
            spread + 2,
            (lambda n: "big" if n < spread else "small") if clients else None,
        )
        connection = await asyncpg.connect(self.dsn)
        await self._reset(connection)
        await self._enqueue(connection, backlog, spread, spread == 1)
        if clients:
            await connection.execute(_CLIENT_BACKLOG, CLIENT_BACKLOG, channel_id(spread + 1))
        await connection.execute(
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
            "SELECT $1, '49153' || lpad(g::text, 8, '0'), now() "
            "FROM generate_series(1, 10) AS g",
            small,
        )
        senders = await _senders(config, 1)
        committed: dict[str, float] = {}
        try:
            await asyncio.sleep(5.0)  # the backlog is flowing
            for n in range(1, 11):
                message_id = await connection.fetchval(
                    "INSERT INTO outbox.messages (channel, recipient, payload) VALUES "
                    """($1, $2, '{"type":"text","text":{"body":"otp"}}') RETURNING id""",
                    small,
                    f"49153{n:08d}",
                )
                committed[f"outbox:{message_id}"] = time.time()
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            async with aiohttp.ClientSession() as session:
                log = await _log(session, api_url)
            run.peak_rss_mb = _peak_rss_mb(senders[0].pid)
        finally:
            await _stop(senders)
            await _stop([api])
            await connection.close()
        delays = sorted(at - committed[key] for key, at in log if key in committed)
        run.extra["small seen"] = len(delays)
        run.extra["small p99 ms"] = (delays[-1] if delays else float("inf")) * 1000
        run.extra["backlog sent"] = len(log) - len(delays)
        if clients:
            run.extra["client share"] = await _share(self.dsn, log, channel_id(spread + 1))
        return run


# The small client's own backlog (--fair-clients), on its second number, in one statement (which
# names no channel: the cursor finds it).
CLIENT_BACKLOG = 100_000
_CLIENT_BACKLOG = """
WITH rows AS (
    SELECT $2::text AS channel, '49154' || lpad(g::text, 8, '0') AS recipient, g
    FROM generate_series(1, $1) AS g
), inbound AS (
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT channel, recipient, now() - interval '1 minute' FROM rows
)
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT channel, recipient, '{"type":"text","text":{"body":"campaign"}}'::jsonb FROM rows
"""


async def _share(dsn: str, log: list[tuple[str, float]], channel: str) -> float:
    """The part of the requests logged from the first one of `channel` on that went to it."""
    ids = [int(key.split(":")[1]) for key, _ in log if key.startswith("outbox:")]
    connection = await asyncpg.connect(dsn)
    try:
        ours = await connection.fetchval(
            "SELECT array_agg(id) FROM outbox.messages WHERE id = ANY($1) AND channel = $2",
            ids,
            channel,
        )
    finally:
        await connection.close()
    ours = set(ours or [])
    first = next((n for n, key in enumerate(ids) if key in ours), len(ids))
    return len(ours) / max(1, len(ids) - first)


def _medians(runs: list[Run]) -> list[Run]:
    """One run per label, in first-seen order: the one with the median rate (the lower middle
    of an even count), carrying every round's extras and the range of rates it came from."""
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    medians = []
    for same in by_label.values():
        ordered = sorted(same, key=lambda r: r.rate)
        median = ordered[(len(ordered) - 1) // 2]
        for run in same:
            median.extra = {**run.extra, **median.extra}
        median.duplicates = sum(r.duplicates for r in same)
        median.peak_rss_mb = max(r.peak_rss_mb for r in same)
        if len(same) > 1:
            median.extra["slowest"], median.extra["fastest"] = ordered[0].rate, ordered[-1].rate
        medians.append(median)
    return medians


def _spread(run: Run) -> str:
    x = run.extra
    return f"  ({x['slowest']:,.0f}–{x['fastest']:,.0f})" if "slowest" in x else ""


def _print_peers(runs: list[Run]) -> None:
    print(f"\n{'peers, 200 in flight':<28}{'msg/s':>9}{'CPU':>7}{'µs/msg':>8}{'DB µs/msg':>10}"
          f"{'API µs/msg':>11}{'machine':>8}{'RSS MB':>8}{'dupes':>7}{'÷pgq':>7}{'÷batched':>9}"
          f"{'÷bare':>7}")  # fmt: skip
    by = {r.label: r for r in runs}
    for run in runs:
        latency = run.label.split(", ")[1]
        pgq, batched = by.get(f"pgqueuer, {latency}"), by.get(f"batched, {latency}")
        bare = by.get(f"bare, {latency}")
        print(
            f"{run.label:<28}{run.rate:>9,.0f}{run.cpu:>7.2f}{_per_message(run.cpu, run):>8.0f}"
            f"{_per_message(run.db_cpu, run):>10.0f}{_per_message(run.api_cpu, run):>11.0f}"
            f"{run.machine:>8.2f}{run.peak_rss_mb:>8.1f}{run.duplicates:>7}{run.rate / pgq.rate if pgq else 0:>7.2f}"
            f"{run.rate / batched.rate if batched else 0:>9.2f}"
            f"{run.rate / bare.rate if bare else 0:>7.2f}{_spread(run)}"
        )
    for run in runs:
        if run.label == "outbox, 50 ms":
            print(f"outbox at 50 ms: {run.rate / (IN_FLIGHT / 0.05):.0%} of the latency bound")


def _per_message(cores: float, run: Run) -> float:
    """CPU microseconds per message, from the cores kept busy and the rate."""
    return cores / run.rate * 1e6 if run.rate else 0.0


def _print_channels(runs: list[Run]) -> None:
    if not runs:
        return
    # Each code's runs against its own one-channel drain.
    ones = {r.label.endswith("(baseline)"): r.rate for r in runs if r.label.startswith("1 ch,")}
    print(f"\n{'channels':<34}{'msg/s':>8}{'÷1ch':>6}{'CPU':>6}{'µs/msg':>7}{'DB µs/msg':>10}"
          f"{'machine':>8}{'idle xact/s':>12}{'idle CPU':>9}{'p50 ms':>8}{'p99 ms':>8}{'RSS MB':>8}"
          f"{'dupes':>6}")  # fmt: skip
    for run in runs:
        x = run.extra
        print(
            f"{run.label:<34}{run.rate:>8,.0f}"
            f"{run.rate / (ones.get(run.label.endswith('(baseline)')) or run.rate):>6.2f}"
            f"{run.cpu:>6.2f}"
            f"{_per_message(run.cpu, run):>7.0f}{_per_message(run.db_cpu, run):>10.0f}"
            f"{run.machine:>8.2f}"
            f"{x.get('idle xact/s', float('nan')):>12.1f}{x.get('idle CPU', float('nan')):>9.3f}"
            f"{x.get('steady p50 ms', float('nan')):>8.1f}"
            f"{x.get('steady p99 ms', float('nan')):>8.1f}{run.peak_rss_mb:>8.1f}"
            f"{run.duplicates:>6}{_spread(run)}"
            + (f"  ({x['steady unsent']:.0f} not sent in time)" if x.get("steady unsent") else "")
        )


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbox-scale-"))
    peers: list[Run] = []
    channels: list[Run] = []
    fair: Run | None = None
    try:
        async with embedded_database() as dsn:
            engine = create_engine(dsn, pool_size=1)
            await migrate.upgrade(engine)
            await engine.dispose()
            bench = Bench(dsn, workdir, args.limit, args.baseline)
            await bench.find_postmaster()
            kinds = ("outbox", "pgqueuer", "batched") + (("baseline",) if args.baseline else ())
            if args.kinds:
                kinds = tuple(args.kinds.split(","))
            # Rounds interleave every run, so that the machine's drift between minutes falls on
            # all of them alike, and each round starts with the next kind: the first run after
            # the channel runs drained slower (one session: the same sender 22 % behind itself
            # when it always went first). The idle and steady figures are taken in the first.
            for round_ in range(args.repeat):
                turn = round_ % len(kinds)
                if args.peers:
                    for latency in args.latencies:
                        for kind in kinds[turn:] + kinds[:turn]:
                            peers.append(await bench.peer(kind, args.messages, latency))
                            print(peers[-1], flush=True)
                steady = args.steady_seconds if round_ == 0 else 0
                # With --baseline, each channel run is followed by the baseline's, in turn.
                codes = [False, True] if args.baseline else [False]
                codes = codes[round_ % len(codes) :] + codes[: round_ % len(codes)]
                for count in args.channels:
                    for base in codes:
                        run = await bench.channels(
                            count, args.messages, False, steady, baseline=base
                        )
                        channels.append(run)
                        print(channels[-1], flush=True)
                    for base in codes if count > 1 else []:
                        run = await bench.channels(count, args.messages, True, 0, baseline=base)
                        channels.append(run)
                        print(channels[-1], flush=True)
            if args.fair_backlog:
                fair = await bench.fairness(args.fair_backlog, args.fair_spread, args.fair_clients)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peers, channels = _medians(peers), _medians(channels)
    _print_peers(peers)
    _print_channels(channels)
    if fair is not None:
        x = fair.extra
        print(
            f"\n{fair.label}: 10 rows on another channel, p99 INSERT -> request "
            f"{x['small p99 ms']:.1f} ms ({x['small seen']:.0f} of 10 seen), "
            f"{x['backlog sent']:.0f} backlog rows sent meanwhile, peak RSS "
            f"{fair.peak_rss_mb:.1f} MB"
        )
        if args.fair_clients:
            print(
                f"the small client's second number (its {CLIENT_BACKLOG:,}-row backlog) got "
                f"{x['client share']:.1%} of the requests from its first one on"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument(
        "--channels", type=lambda s: [int(n) for n in s.split(",") if n], default=[1, 1000]
    )
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every drain, interleaved; the median of each is reported, with its range",
    )
    parser.add_argument("--fair-backlog", type=int, default=0)
    parser.add_argument(
        "--fair-spread", type=int, default=1, help="channels the fairness backlog is spread over"
    )
    parser.add_argument(
        "--fair-clients",
        action="store_true",
        help="the backlog's channels are one client's; another client has a backlog too",
    )
    parser.add_argument("--steady-seconds", type=float, default=5.0)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also run the sender of this checkout (kind baseline, and beside each channel run)",
    )
    parser.add_argument(
        "--latencies", type=lambda s: [float(n) for n in s.split(",") if n], default=[0.0, 50.0]
    )
    parser.add_argument(
        "--kinds",
        default=None,
        help="peers to run, e.g. outbox,baseline; pgqueuer+gc: pgqueuer with the collector "
        "settings of `outbox run`",
    )
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per drain, at most")
    asyncio.run(main(parser.parse_args()))
