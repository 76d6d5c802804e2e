"""The daemon behind a real PgBouncer in transaction mode (issue 16): `database_url` goes through
the pooler with `[database] pooler = "pgbouncer"`, `listen_database_url` straight to PostgreSQL.

Without the pooler setting the first transactions already fail with `prepared statement
"__asyncpg_stmt_N__" does not exist`: the statements SQLAlchemy's asyncpg dialect prepares and
caches stay on the server session they were prepared on, which PgBouncer gives to another
client when the transaction ends.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from outbox.config import DatabaseConfig, Pooler
from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.registry import ChannelRegistryStore
from outbox.sandbox import Sandbox
from tests.integration.test_channel_registry import channel, keyring
from tests.pgbouncer import PgBouncer, pgbouncer_fixture  # noqa: F401
from tests.support import (
    KEYS,
    accepted_count,
    busiest_second,
    config_toml,
    daemon_started,
    drain,
    enqueue_in_window,
    fetch,
    listener_count,
    outbox_command,
    settings_for,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

ROWS = 100
RATED_ROWS = 60  # three seconds at RATE
RATE = 20  # per second, per channel, for all processes together
POLL = 30  # seconds: far longer than any wait here, so only NOTIFY wakes a sender


def _config(tmp_path: Path, bouncer: PgBouncer, db_url: str, base_url: str, **sender: Any) -> Path:
    text = (
        f"listen_database_url = {json.dumps(db_url)}\n"
        + config_toml(bouncer.url(db_url), base_url, **sender)
        + '\n[database]\npooler = "pgbouncer"\n'
    ).replace("poll_interval = 1\n", f"poll_interval = {POLL}\n")
    config = tmp_path / "outbox.toml"
    config.write_text(text)
    return config


async def _count(db_url: str, sql: str) -> int:
    return int((await fetch(db_url, sql))[0][0])


async def _listeners_are(db_url: str, count: int) -> bool:
    return await listener_count(db_url) == count


async def _all_read(db_url: str) -> bool:
    return await _count(db_url, "SELECT count(*) FROM outbox.messages WHERE state <> 'read'") == 0


def _driver_errors(logs: list[Path]) -> list[str]:
    """Log lines naming a prepared statement: what a session-bound cache does behind PgBouncer."""
    return [
        line
        for log in logs
        for line in log.read_text().splitlines()
        if "prepared statement" in line
    ]


async def test_a_daemon_behind_pgbouncer_sends_once_wakes_on_notify_and_reconciles_webhooks(
    db_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    api = Sandbox(KEYS)  # posts sent, delivered and read to the webhook URL set below
    base_url = await api.start()
    config = _config(tmp_path, pgbouncer, db_url, base_url)
    log = tmp_path / "daemon.log"
    process = await spawn_daemon(config, log, "sender,reconciler,web")
    try:
        port = (await daemon_started(process, log))["http_port"]
        for channel in ("cloud", "onprem"):
            url = f"http://127.0.0.1:{port}/webhooks/{channel}"
            code, _, err = await outbox_command(
                "set-webhook", channel, url, "--config", str(config)
            )
            assert code == 0, err
        # The listener is on the direct URL: a session of PostgreSQL's own.
        await wait_until(lambda: _listeners_are(db_url, 1), within=20)
        inserted = time.monotonic()
        await enqueue_in_window(db_url, ROWS)
        await wait_until(lambda: len(api.message_requests()) >= ROWS, within=20)
        woken_after = min(r.at for r in api.message_requests()) - inserted
        await wait_until(lambda: _all_read(db_url), within=30, interval=0.1)
    finally:
        code = await stop_daemon(process, log)
        await api.stop()
    assert code == 0, log.read_text()[-3000:]
    assert woken_after < POLL / 3  # NOTIFY, not the next poll

    requested = Counter(r.body["to"] for r in api.message_requests())
    assert len(requested) == ROWS
    assert set(requested.values()) == {1}  # each row once
    [hooks] = await fetch(
        db_url,
        "SELECT count(*) AS stored, count(processed_at) AS processed, count(error) AS failed "
        "FROM outbox.webhook_events",
    )
    assert hooks["stored"] > 0
    assert (hooks["processed"], hooks["failed"]) == (hooks["stored"], 0)
    # Every row reached `read` (waited for above) by statuses the reconciler applied.
    read = "SELECT count(DISTINCT message_id) FROM outbox.status_history WHERE status = 'read'"
    assert await _count(db_url, read) == ROWS
    assert _driver_errors([log]) == []
    # The daemon's own sessions did go through the pooler.
    database = db_url.split("?")[0].rsplit("/", 1)[1]
    assert f"{database}/postgres@127.0.0.1" in pgbouncer.log.read_text()
    # So do the operator's commands.
    code, out, err = await outbox_command("stats", "--config", str(config))
    assert code == 0, err
    assert "cloud" in out


async def test_two_daemons_behind_pgbouncer_share_one_rate_limit(
    db_url: str,
    pgbouncer: PgBouncer,
    sandbox: tuple[Sandbox, str],
    tmp_path: Path,
    quiet_gc: None,
) -> None:
    api, base_url = sandbox
    config = _config(tmp_path, pgbouncer, db_url, base_url, rate=RATE, batch_size=10)
    logs = [tmp_path / f"{name}.log" for name in ("a", "b")]
    processes = [await spawn_daemon(config, log) for log in logs]
    try:
        await wait_until(lambda: _listeners_are(db_url, 2), within=20)
        await enqueue_in_window(db_url, RATED_ROWS, channel="cloud")
        await wait_until(lambda: len(api.message_requests()) >= RATED_ROWS, within=30, interval=0.1)
    finally:
        codes = [await stop_daemon(p, log) for p, log in zip(processes, logs, strict=True)]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    requests = api.message_requests()
    assert sorted(Counter(r.body["to"] for r in requests).values()) == [1] * RATED_ROWS
    # The channel's burst is a tenth of its rate; two buckets, one per process, would give 2x.
    assert busiest_second([r.at for r in requests]) <= RATE + RATE / 10
    assert all(accepted_count(log) > 0 for log in logs)  # both processes sent
    assert _driver_errors(logs) == []


async def test_without_a_direct_url_the_daemon_says_so_and_polls(
    db_url: str, pgbouncer: PgBouncer, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    settings = replace(
        settings_for(pgbouncer.url(db_url), base_url), database=DatabaseConfig(Pooler.PGBOUNCER)
    )
    await enqueue_in_window(db_url, 20)
    with structlog.testing.capture_logs() as logs:
        await drain(settings)
    assert len(api.message_requests()) == 20
    states = await fetch(db_url, "SELECT DISTINCT state FROM outbox.messages")
    assert [r["state"] for r in states] == ["accepted"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["outbox.listener.off"]


async def test_outbox_migrate_runs_on_the_direct_url(empty_db_url: str, tmp_path: Path) -> None:
    """`database_url` (the pooler) is not even reachable: migrate must not need it."""
    config = tmp_path / "outbox.toml"
    config.write_text(
        'database_url = "postgresql://postgres@127.0.0.1:9/through-the-pooler"\n'
        f"listen_database_url = {json.dumps(empty_db_url)}\n"
        '[database]\npooler = "pgbouncer"\n'
    )
    code, out, err = await outbox_command("migrate", "--config", str(config))
    assert code == 0, err
    assert f"schema: empty -> {migrate.head_revision()}" in out


async def test_the_registry_is_read_a_page_at_a_time_through_pgbouncer(
    db_url: str, pgbouncer: PgBouncer
) -> None:
    """The registry's read (a cursor, a page at a time, in one REPEATABLE READ transaction)
    and the sealed check work in transaction mode, read after read."""
    engine = create_engine(pgbouncer.url(db_url), pooler=Pooler.PGBOUNCER)
    try:
        store = ChannelRegistryStore(engine, keyring())
        for n in range(600):  # three pages
            await store.add(channel(f"c{n:04d}", key=f"key-{n}"), enabled=True)
        await store.mirror_file([channel("from-file")])
        for _ in range(3):
            snapshot = await store.snapshot()
            assert len(snapshot.channels) == 600
            assert len(snapshot.known) == 601
        assert await store.check_sealed() == 600
    finally:
        await engine.dispose()
