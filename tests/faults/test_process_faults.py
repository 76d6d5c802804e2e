"""Faults against real `outbox run` processes: a crash, a PostgreSQL restart, a held transaction
and a stop under load.

Each scenario asserts its outcome and records the figures the README's "Reliability" section
quotes (`figures.add`); pytest prints them at the end and writes faults-report.md. The sandbox
runs in the test's own event loop, so every request it saw is at hand, with its body; the
daemons are separate processes, so a SIGKILL is a real crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import orjson
import pytest

from outbox.sandbox import Sandbox
from outbox.sandbox.server import RecordedRequest
from outbox.services import results
from tests.support import (
    KEYS,
    config_toml,
    daemon_http_port,
    enqueue_in_window,
    fetch,
    spawn_daemon,
    wait_until,
)

if TYPE_CHECKING:  # the fixtures' types only; pytest imports the conftest itself
    from tests.faults.conftest import RestartablePostgres
    from tests.figures import Figures

pytestmark = [pytest.mark.faults, pytest.mark.slow]


async def _enqueue(db_url: str, count: int, offset: int = 0) -> None:
    """Insert a backlog, then ANALYZE it as the benchmark does: without statistics that know
    the backlog, the claim walks every open row of the channel per row it takes (see
    test_a_backlog_newer_than_the_statistics_drains_at_full_speed), and each scenario would
    measure that instead of its fault."""
    await enqueue_in_window(db_url, count, after=offset)
    await fetch(db_url, "ANALYZE outbox.messages")


MAX_IN_FLIGHT = 200  # the [sender] default, which every scenario keeps
DONE = ("accepted", "sent", "delivered", "read")  # "accepted or later"


# --- Processes -----------------------------------------------------------------------------


async def _terminate(process: asyncio.subprocess.Process, log: Path) -> tuple[int, float]:
    """SIGTERM; the exit code and the seconds from the signal to the exit."""
    signalled = time.monotonic()
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), 60)
    except TimeoutError:
        process.kill()
        raise AssertionError(f"daemon did not stop; log:\n{_tail(log)}") from None
    return code, time.monotonic() - signalled


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Clean-up only: whatever a failed test left running."""
    if process.returncode is None:
        process.kill()
        await process.wait()


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
    return found


async def _until(
    process: asyncio.subprocess.Process,
    log: Path,
    predicate: Callable[[], Any],
    within: float,
    interval: float = 0.05,
) -> None:
    """`wait_until`, except that a daemon that exits meanwhile fails the test at once, with
    its log, rather than as a timeout."""

    async def alive_and() -> bool:
        assert process.returncode is None, f"daemon exited ({process.returncode}):\n{_tail(log)}"
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        return bool(result)

    await wait_until(alive_and, within=within, interval=interval)


async def _listening(db_url: str) -> bool:
    rows = await fetch(
        db_url,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'outbox:listener' AND datname = current_database()",
    )
    return int(rows[0][0]) >= 1


# --- Reading the outcome ---------------------------------------------------------------------


async def _scalar(db_url: str, sql: str, *args: Any) -> Any:
    return (await fetch(db_url, sql, *args))[0][0]


async def _states(db_url: str) -> dict[str, int]:
    rows = await fetch(db_url, "SELECT state, count(*) AS n FROM outbox.messages GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


async def _open_rows(db_url: str) -> int:
    return int(
        await _scalar(
            db_url,
            "SELECT count(*) FROM outbox.messages WHERE state IN ('queued', 'sending', 'unknown')",
        )
    )


async def _all_done(db_url: str) -> bool:
    return await _open_rows(db_url) == 0


def _api_accepted(api: Sandbox) -> int:
    """Requests the sandbox accepted so far (whether or not the client saw the answer)."""
    return sum(1 for r in api.requests if r.message_id is not None)


async def _ids_by_recipient(db_url: str) -> dict[str, int]:
    rows = await fetch(db_url, "SELECT id, recipient FROM outbox.messages")
    return {r["recipient"]: int(r["id"]) for r in rows}


def _message_id(request: RecordedRequest, ids_by_recipient: dict[str, int]) -> int:
    """The row a request was for: Cloud requests name it in biz_opaque_callback_data,
    On-Premise ones only by `to` (every recipient is distinct)."""
    if request.dialect == "cloud":
        return int(request.body["biz_opaque_callback_data"].removeprefix("outbox:"))
    return ids_by_recipient[request.body["to"]]


def _requests_per_message(
    requests: list[RecordedRequest], ids_by_recipient: dict[str, int]
) -> Counter[int]:
    return Counter(_message_id(r, ids_by_recipient) for r in requests)


@asynccontextmanager
async def _sandbox(latency: float) -> AsyncIterator[tuple[Sandbox, str]]:
    # No status webhooks: an `unknown` row then follows its channel's policy, on Cloud too.
    api = Sandbox(KEYS, latency=latency, statuses=False)
    base_url = await api.start()
    try:
        yield api, base_url
    finally:
        await api.stop()


# --- 1. kill -9 mid-drain --------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_kill_9_mid_drain_resends_only_the_in_flight_rows_once(
    restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    db = restartable_db_url
    total, kill_at = 10_000, 3_000
    # A short lease, so that the crashed process's rows turn `unknown` within seconds, and a
    # short quiet period, so that the resend policy applies within the test.
    lease, quiet = 4, 1
    config = tmp_path / "outbox.toml"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes: list[asyncio.subprocess.Process] = []
    async with _sandbox(latency=0.05) as (api, base_url):
        config.write_text(
            config_toml(
                db,
                base_url,
                lease=lease,
                request_timeout=2,
                unknown_quiet=quiet,
                maintenance_interval=0.5,
            )
        )
        try:
            processes.append(await spawn_daemon(config, logs[0]))
            await _until(processes[0], logs[0], lambda: _listening(db), within=30)
            await _enqueue(db, total)
            await _until(processes[0], logs[0], lambda: _api_accepted(api) >= kill_at, 60, 0.005)
            processes[0].kill()
            await processes[0].wait()
            # Nobody holds these rows now: this is the in-flight set, frozen until the leases
            # run out.
            rows = await fetch(db, "SELECT id FROM outbox.messages WHERE state = 'sending'")
            in_flight = {int(r["id"]) for r in rows}
            accepted_at_kill = await _scalar(
                db, "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'"
            )
            restarted = time.monotonic()
            processes.append(await spawn_daemon(config, logs[1]))
            await _until(processes[1], logs[1], lambda: _all_done(db), within=60)
            drain_seconds = time.monotonic() - restarted
            code, _ = await _terminate(processes[1], logs[1])
        finally:
            for process in processes:
                await _kill(process)
        requests = api.message_requests()
    assert processes[0].returncode == -signal.SIGKILL
    assert code == 0, _tail(logs[1])

    rows = await fetch(db, "SELECT id, state, attempts, unknown_resends FROM outbox.messages")
    assert len(rows) == total
    assert {r["state"] for r in rows} == {"accepted"}
    # The kill landed mid-drain, with requests out. `sending` holds the rows in flight (a claim
    # never exceeds the free slots) and those answered but not yet written: a slot is free when
    # its request ends (issue 16), and the result buffer bounds the rest. A busy machine (the
    # CI burner) saw 260 here, the writes behind the answers.
    assert 0 < len(in_flight) <= MAX_IN_FLIGHT + results.HELD_AT_MOST, len(in_flight)
    ids_by_recipient = await _ids_by_recipient(db)
    counts = _requests_per_message(requests, ids_by_recipient)
    assert set(counts) == {r["id"] for r in rows}  # every message was requested
    assert max(counts.values()) <= 2
    twice = {message_id for message_id, n in counts.items() if n > 1}
    # Only a row the crash left `sending` may have been requested again, and only once more.
    assert twice <= in_flight, sorted(twice - in_flight)[:20]
    assert len(twice) <= len(in_flight)
    # Each in-flight row went through `unknown` (lease rescue, then the resend policy) and no
    # other row did: `unknown_resends` and the second attempt are what the row keeps of it.
    went_unknown = {r["id"] for r in rows if r["unknown_resends"] == 1}
    assert went_unknown == in_flight, (len(went_unknown), len(in_flight))
    assert {r["attempts"] for r in rows if r["id"] in in_flight} == {2}
    assert {r["attempts"] for r in rows if r["id"] not in in_flight} == {1}
    # What the first of the two requests got: cut off by the kill (status 0), or answered with
    # an outcome the process died before writing.
    first: dict[int, int] = {}
    for request in requests:
        first.setdefault(_message_id(request, ids_by_recipient), request.status)
    cut_off = sum(first[message_id] == 0 for message_id in twice)

    scenario = "kill -9 mid-drain (1 sender, sandbox 50 ms, lease 4 s, unknown_quiet 1 s)"
    figures.add(scenario, f"messages: {total:,}, all accepted in the end")
    figures.add(
        scenario,
        f"killed with {accepted_at_kill:,} rows accepted; in flight (`sending`) at the kill:"
        f" {len(in_flight)} (max_in_flight {MAX_IN_FLIGHT})",
    )
    figures.add(
        scenario,
        f"sent twice: {len(twice)} of the {len(in_flight)} in flight (first request cut off by"
        f" the kill: {cut_off}; answered, but the process died before writing the outcome:"
        f" {len(twice) - cut_off}); every in-flight row went `unknown` and was resent once;"
        f" no other row was requested twice",
    )
    figures.add(
        scenario,
        f"time to drain after the restart: {drain_seconds:.1f} s"
        f" ({total - accepted_at_kill:,} rows, the lease and the quiet period included)",
    )


# --- 2. PostgreSQL restart mid-drain and mid-webhook-flood -----------------------------------


@dataclass(frozen=True)
class Post:
    marker: str
    sent: float  # time.monotonic()
    answered: float
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)


@dataclass
class WebhookFlood:
    """Posts valid webhook bodies to the daemon without pause: inbound messages from the
    recipients, and `sent` statuses for what the sandbox accepted (as 360dialog would post
    them), each body with a marker to find its stored row by."""

    base: str
    api: Sandbox
    recipients: list[tuple[str, str]]  # (channel, recipient)
    posts: list[Post] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _statused: int = 0  # accepted sandbox requests already given a status

    def _next_body(self) -> tuple[str, str, dict[str, Any]]:
        n = next(self._seq)
        accepted = [r for r in self.api.requests[self._statused :] if r.message_id is not None]
        if n % 2 and accepted:
            request = accepted[0]
            self._statused = self.api.requests.index(request, self._statused) + 1
            return _status_body(request)
        channel, recipient = self.recipients[n % len(self.recipients)]
        marker = f"wamid.flood{n:07d}"
        return channel, marker, _inbound_body(channel, recipient, marker)

    async def run(self, session: aiohttp.ClientSession) -> None:
        # Stopped by the event, never cancelled: a post cut off after the receiver stored its
        # body would be a stored row with no answer on record.
        while not self.stop.is_set():
            channel, marker, body = self._next_body()
            sent = time.monotonic()
            try:
                async with session.post(
                    f"{self.base}/webhooks/{channel}", data=orjson.dumps(body)
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.posts.append(Post(marker, sent, time.monotonic(), status))
            if status != 200:
                await asyncio.sleep(0.01)  # as a retrying client would; no busy loop


def _cloud(value: dict[str, Any]) -> dict[str, Any]:
    metadata = {"display_phone_number": "15550000001", "phone_number_id": "105000000000001"}
    change = {
        "field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "104000000000001", "changes": [change]}],
    }


def _inbound_body(channel: str, recipient: str, marker: str) -> dict[str, Any]:
    value = {
        "contacts": [{"profile": {"name": "User"}, "wa_id": recipient}],
        "messages": [
            {
                "from": recipient,
                "id": marker,
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": "hello"},
            }
        ],
    }
    return value if channel == "onprem" else _cloud(value)


def _status_body(request: RecordedRequest) -> tuple[str, str, dict[str, Any]]:
    assert request.message_id is not None
    item: dict[str, Any] = {
        "id": request.message_id,
        "recipient_id": request.body["to"],
        "status": "sent",
        "timestamp": str(int(time.time())),
    }
    if request.dialect == "onprem":
        return "onprem", request.message_id, {"statuses": [item]}
    item["biz_opaque_callback_data"] = request.body["biz_opaque_callback_data"]
    return "cloud", request.message_id, _cloud({"statuses": [item]})


def _marker(payload: dict[str, Any]) -> str:
    value = payload["entry"][0]["changes"][0]["value"] if "entry" in payload else payload
    items: list[dict[str, Any]] = value.get("messages") or value["statuses"]
    return str(items[0]["id"])


@pytest.mark.timeout(150)
async def test_postgres_restart_mid_drain_and_webhook_flood(
    own_pg: RestartablePostgres, restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    db = restartable_db_url
    total, outage = 5_000, 5.0
    config = tmp_path / "outbox.toml"
    log = tmp_path / "daemon.log"
    async with _sandbox(latency=0.02) as (api, base_url):
        # 250/s per channel: the drain lasts ~10 s, long enough to be cut by the outage.
        config.write_text(
            config_toml(
                db,
                base_url,
                rate=250,
                lease=10,
                request_timeout=3,
                unknown_quiet=1,
                maintenance_interval=0.5,
            )
        )
        process = await spawn_daemon(config, log, "sender,reconciler,web")
        flood_tasks: list[asyncio.Task[None]] = []
        pg_down = False
        try:
            port = await daemon_http_port(process, log)
            await _until(process, log, lambda: _listening(db), within=30)
            await _enqueue(db, total)
            recipients = [
                (r["channel"], r["recipient"])
                for r in await fetch(db, "SELECT channel, recipient FROM outbox.messages")
            ]
            flood = WebhookFlood(f"http://127.0.0.1:{port}", api, recipients)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                flood_tasks = [asyncio.create_task(flood.run(session)) for _ in range(4)]
                await _until(process, log, lambda: _api_accepted(api) >= total // 5, 60)
                stopping = time.monotonic()
                # pg_ctl blocks: in a thread, so that the sandbox and the flood carry on.
                pg_down = True
                await asyncio.to_thread(own_pg.stop)
                down = time.monotonic()
                # The outage, watching the daemon all along: it must not exit.
                await _until(process, log, lambda: time.monotonic() >= down + outage, outage + 5)
                starting = time.monotonic()
                await asyncio.to_thread(own_pg.start)
                pg_down = False
                up = time.monotonic()
                accepted_when_up = _api_accepted(api)
                await _until(process, log, lambda: _all_done(db), within=90, interval=0.2)
                drained = time.monotonic()
                flood.stop.set()
                await asyncio.gather(*flood_tasks)
            # The reconciler recovered too: every stored body gets processed.
            await _until(process, log, lambda: _no_unprocessed_webhooks(db), 30, 0.2)
            assert process.returncode is None, _tail(log)
            code, _ = await _terminate(process, log)
        finally:
            for task in flood_tasks:
                task.cancel()
            await _kill(process)
            if pg_down:  # a failure mid-outage must not leave the suite's server stopped
                await asyncio.to_thread(own_pg.start)
        requests = api.message_requests()
    assert code == 0, _tail(log)

    posts = flood.posts
    ok = [p for p in posts if p.status == 200]
    # Posts made and answered wholly inside the outage (server stopped, not yet restarting).
    during = [p for p in posts if p.sent >= down and p.answered <= starting]
    refused = Counter(p.status for p in during)
    assert during, "no webhook was posted during the outage"
    assert refused[200] == 0, refused
    assert refused[503] > 0, refused  # the receiver answered, and with a retryable 503
    stored = [
        _marker(json.loads(r["payload"]))
        for r in await fetch(db, "SELECT payload FROM outbox.webhook_events")
    ]
    # None lost: every body answered 200 has its row, and (bodies are distinct) only those.
    assert {p.marker for p in ok} <= set(stored)
    assert len(stored) == len(ok), (len(stored), len(ok))
    first_ok_after = min((p.answered for p in ok if p.sent >= up), default=math.inf)
    assert first_ok_after < math.inf
    first_send_after = min(r.at for r in requests if r.at >= up)

    rows = await fetch(db, "SELECT id, state, unknown_resends FROM outbox.messages")
    states = Counter(r["state"] for r in rows)
    assert set(states) <= set(DONE), states
    assert sum(states.values()) == total
    counts = _requests_per_message(requests, await _ids_by_recipient(db))
    assert len(counts) == total
    twice = {message_id for message_id, n in counts.items() if n > 1}
    went_unknown = {r["id"] for r in rows if r["unknown_resends"] > 0}
    assert twice <= went_unknown, sorted(twice - went_unknown)[:20]

    scenario = "PostgreSQL restart mid-drain and mid-webhook-flood (1 process, all roles)"
    figures.add(
        scenario,
        f"outage: {down - stopping:.1f} s to stop (pg_ctl -m fast), {starting - down:.1f} s"
        f" down, {up - starting:.1f} s to start: {up - stopping:.1f} s in all;"
        f" the daemon never exited",
    )
    figures.add(
        scenario,
        f"webhooks: {len(posts):,} posted, {len(ok):,} answered 200, {len(stored):,} rows stored"
        f" (none lost); {sum(p.status == 503 for p in posts):,} answered 503,"
        f" {sum(p.status == 0 for p in posts):,} without an answer;"
        f" posted during the outage: {len(during):,}, of them 200: {refused[200]}",
    )
    figures.add(
        scenario,
        f"time to recover: first 200 {first_ok_after - up:.2f} s, first send request"
        f" {first_send_after - up:.2f} s after PostgreSQL was up",
    )
    figures.add(
        scenario,
        f"messages: {total:,} (rate 2 x 250/s); {accepted_when_up:,} accepted by the API when"
        f" PostgreSQL was up again; all {total:,} accepted or later {drained - up:.1f} s after"
        f" that, none left `sending`; requested twice: {len(twice)};"
        f" went through `unknown`: {len(went_unknown)}",
    )


async def _no_unprocessed_webhooks(db_url: str) -> bool:
    pending = await _scalar(
        db_url, "SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL"
    )
    return int(pending) == 0


# --- 3. A transaction held open --------------------------------------------------------------

# The other session keeps its transaction open at least this long, and until the batch sent
# meanwhile has drained: the scenario is a drain under an old snapshot, not a given length of
# wait (it held a fixed 60 s, 40 s of them idle, a minute of every CI run).
HOLD_SECONDS = 20.0
WINDOW_SECONDS = 5.0


def _windows(times: list[float], start: float, end: float) -> list[int]:
    """Requests per WINDOW_SECONDS window from `start`, the last window ending at or after
    `end`."""
    count = max(1, math.ceil((end - start) / WINDOW_SECONDS))
    windows = [0] * count
    for at in times:
        if start <= at < start + count * WINDOW_SECONDS:
            windows[int((at - start) // WINDOW_SECONDS)] += 1
    return windows


async def _gauges(session: aiohttp.ClientSession, base: str, *series: str) -> list[float]:
    """The values of some series (name plus labels, as /metrics prints them); 0 if absent."""
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    values = dict.fromkeys(series, 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in values:
            values[name] = float(value)
    return list(values.values())


OLDEST_TRANSACTION = "outbox_oldest_transaction_age_seconds"
DEAD_TUPLES = 'outbox_table_dead_tuples{table="messages"}'


async def _drain_batch(
    process: asyncio.subprocess.Process, log: Path, api: Sandbox, db: str, count: int, offset: int
) -> tuple[float, list[float]]:
    """Enqueue `count` rows and wait until the API has seen them all; the seconds it took and
    the arrival times of their requests."""
    seen = len(api.message_requests())
    started = time.monotonic()
    await _enqueue(db, count, offset)
    await _until(process, log, lambda: len(api.message_requests()) >= seen + count, 120)
    times = [r.at for r in api.message_requests()[seen:]]
    return max(times) - started, times


@pytest.mark.timeout(HOLD_SECONDS + 150)
async def test_a_held_transaction_does_not_stall_the_drain(
    restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    db = restartable_db_url
    before_rows, during_rows, after_rows = 5_000, 20_000, 5_000
    config = tmp_path / "outbox.toml"
    log = tmp_path / "daemon.log"
    async with _sandbox(latency=0.0) as (api, base_url):
        config.write_text(config_toml(db, base_url) + "\n[metrics]\nsample_interval = 1\n")
        process = await spawn_daemon(config, log, "sender,web")
        holder: Any = None
        try:
            port = await daemon_http_port(process, log)
            base = f"http://127.0.0.1:{port}"
            await _until(process, log, lambda: _listening(db), within=30)
            before_seconds, _ = await _drain_batch(process, log, api, db, before_rows, 0)

            holder = await asyncpg.connect(db)
            await holder.execute("BEGIN")
            await holder.fetchval("SELECT txid_current()")
            opened = time.monotonic()
            gauge_max = dead_max = 0.0
            async with aiohttp.ClientSession() as session:
                # The drain while the transaction is open, at full speed.
                during_task = asyncio.create_task(
                    _drain_batch(process, log, api, db, during_rows, before_rows)
                )
                while time.monotonic() - opened < HOLD_SECONDS or not during_task.done():
                    age, dead = await _gauges(session, base, OLDEST_TRANSACTION, DEAD_TUPLES)
                    gauge_max, dead_max = max(gauge_max, age), max(dead_max, dead)
                    await asyncio.sleep(1.0)
                during_seconds, during_times = await during_task
                await holder.execute("COMMIT")
                closed = time.monotonic()
                after_seconds, _ = await _drain_batch(
                    process, log, api, db, after_rows, before_rows + during_rows
                )
            assert process.returncode is None, _tail(log)
            code, _ = await _terminate(process, log)
        finally:
            if holder is not None:
                await holder.close()
            await _kill(process)
        requests = api.message_requests()
    assert code == 0, _tail(log)
    assert len(requests) == before_rows + during_rows + after_rows
    assert await _states(db) == {"accepted": before_rows + during_rows + after_rows}

    # While rows remained (from the first request of the batch to its last), no 5-second window
    # went without a request.
    windows = _windows(during_times, min(during_times), max(during_times))
    assert min(windows) > 0, windows
    assert gauge_max >= HOLD_SECONDS / 2, gauge_max

    held = closed - opened
    scenario = f"transaction held open for {held:.0f} s (1 process, sandbox 0 ms)"
    figures.add(scenario, f"throughput before: {before_rows / before_seconds:,.0f} messages/s")
    figures.add(
        scenario,
        f"throughput during: {during_rows / during_seconds:,.0f} messages/s"
        f" ({during_rows:,} rows); per {WINDOW_SECONDS:.0f} s window: {windows}",
    )
    figures.add(scenario, f"throughput after: {after_rows / after_seconds:,.0f} messages/s")
    figures.add(
        scenario,
        f"{OLDEST_TRANSACTION}: max {gauge_max:.0f} while open;"
        f" dead tuples in outbox.messages meanwhile: up to {dead_max:,.0f}",
    )


# --- 4. Graceful stop under load -------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigterm_at_full_speed_exits_within_grace_and_leaves_nothing_sending(
    restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    db = restartable_db_url
    total, grace, margin = 20_000, 5, 2.0
    config = tmp_path / "outbox.toml"
    log = tmp_path / "daemon.log"
    async with _sandbox(latency=0.0) as (api, base_url):
        config.write_text(config_toml(db, base_url, shutdown_grace=grace))
        process = await spawn_daemon(config, log)
        try:
            await _until(process, log, lambda: _listening(db), within=30)
            await _enqueue(db, total)
            await _until(process, log, lambda: len(api.message_requests()) >= total // 4, 60)
            code, exit_seconds = await _terminate(process, log)
        finally:
            await _kill(process)
        requests = api.message_requests()
    assert code == 0, _tail(log)
    assert exit_seconds <= grace + margin, exit_seconds

    rows = await fetch(db, "SELECT id, recipient, state, attempts FROM outbox.messages")
    states = Counter(r["state"] for r in rows)
    assert set(states) <= {"accepted", "queued"}, states
    counts = _requests_per_message(requests, {r["recipient"]: r["id"] for r in rows})
    assert max(counts.values()) == 1  # no row requested twice
    assert set(counts) == {r["id"] for r in rows if r["state"] == "accepted"}
    assert {r["attempts"] for r in rows if r["state"] == "queued"} == {0}
    assert total // 4 <= states["accepted"] < total
    at_stop = _events(log, "outbox.sender.in_flight_at_stop")

    scenario = "graceful stop (SIGTERM) at full speed (1 sender, sandbox 0 ms, 20,000 rows)"
    figures.add(
        scenario,
        f"rows accepted before the stop: {states['accepted']:,}; left queued with attempts 0:"
        f" {states['queued']:,}; rows left `sending`: {states['sending']}",
    )
    figures.add(
        scenario,
        f"time from SIGTERM to exit 0: {exit_seconds:.2f} s (shutdown_grace {grace} s)",
    )
    if at_stop:
        event = at_stop[0]
        figures.add(
            scenario,
            f"in flight at the signal: {event.get('finished')} finished,"
            f" {event.get('released')} handed back unsent, {event.get('abandoned')} abandoned",
        )


# --- A finding: a backlog newer than the planner's statistics --------------------------------


def _rate(times: list[float]) -> float:
    """Requests per second from the first of `times` to the last."""
    return (len(times) - 1) / (max(times) - min(times))


_HISTORY = """
INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, attempts, accepted_at)
SELECT CASE WHEN g % 2 = 0 THEN 'cloud' ELSE 'onprem' END, '49161' || lpad(g::text, 8, '0'),
       '{"type": "text", "text": {"body": "old"}}', 'accepted', 'wamid.old' || g, 1, now()
FROM generate_series(1, $1::int) AS g
"""


@pytest.mark.timeout(120)
async def test_a_backlog_newer_than_the_statistics_drains_at_full_speed(
    restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    """A table in use (20,000 finished rows, analyzed) gets a campaign of 20,000 rows at once,
    as producers do; nobody runs ANALYZE. The drain's speed is compared with the same drain
    after an ANALYZE, in one run, so the machine's load cancels out."""
    db = restartable_db_url
    burst, sample = 20_000, 1_000
    # Autovacuum would ANALYZE at a moment of its own choosing and blur the comparison.
    await fetch(db, "ALTER TABLE outbox.messages SET (autovacuum_enabled = false)")
    await fetch(db, _HISTORY, burst)
    await fetch(db, "VACUUM ANALYZE outbox.messages")
    config = tmp_path / "outbox.toml"
    log = tmp_path / "daemon.log"
    async with _sandbox(latency=0.0) as (api, base_url):
        config.write_text(config_toml(db, base_url))
        process = await spawn_daemon(config, log)
        try:
            await _until(process, log, lambda: _listening(db), within=30)
            await enqueue_in_window(db, burst)
            # The first `sample` requests warm up (connections, caches); the next are measured.
            await _until(process, log, lambda: len(api.message_requests()) >= 2 * sample, 60)
            await fetch(db, "ANALYZE outbox.messages")
            # Claims already running keep their plan; the new one applies from the next claim.
            analyzed_at = time.monotonic() + 0.5
            await _until(
                process,
                log,
                lambda: sum(r.at >= analyzed_at for r in api.message_requests()) >= sample,
                60,
            )
            code, _ = await _terminate(process, log)
        finally:
            await _kill(process)
        times = [r.at for r in api.message_requests()]
    assert code == 0, _tail(log)
    # Rates between requests, so that neither the INSERT nor the ANALYZE counts.
    stale = _rate(times[sample : 2 * sample])
    analyzed = _rate([at for at in times if at >= analyzed_at][:sample])

    scenario = "finding: a 20,000-row burst newer than the statistics (1 sender, sandbox 0 ms)"
    figures.add(
        scenario,
        f"{sample:,} rows before ANALYZE (after {sample:,} to warm up): {stale:,.0f} messages/s;"
        f" next {sample:,} after it: {analyzed:,.0f} messages/s",
    )
    # The plans this guards against ran 10 to 20 times slower (141 msg/s against 1,347); a
    # window of 1,000 requests lasts a third of a second, and one run here measured 1,939 against
    # 4,513 with nothing wrong (2,541 to 4,249 in the others): a quarter, not a half.
    assert stale >= analyzed / 4, (stale, analyzed)
