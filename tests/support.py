"""Helpers shared by the integration tests: settings, SQL inserts, row reads, daemons."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import asyncpg

from outbox import app
from outbox.config import ChannelConfig, HttpConfig, Secret, SenderConfig, Settings, WebhookAuth
from outbox.domain.models import Dialect
from outbox.services.sender import Sender

KEYS = {"onprem-key": "onprem", "cloud-key": "cloud"}
NAMESPACE = "d8bcb6bd_2ab2_439c_9d9e_947501266c77"


def settings_for(db_url: str, base_url: str, **sender: Any) -> Settings:
    """Two channels that take webhooks without credentials, by choice (tests of authentication
    give a channel credentials)."""
    anyone = WebhookAuth.NONE
    return Settings(
        database_url=db_url,
        channels=(
            ChannelConfig(
                "onprem",
                Dialect.ONPREM,
                base_url,
                Secret("onprem-key"),
                5000.0,
                NAMESPACE,
                webhook_auth=anyone,
            ),
            ChannelConfig(
                "cloud", Dialect.CLOUD, base_url, Secret("cloud-key"), 5000.0, webhook_auth=anyone
            ),
        ),
        http=HttpConfig("127.0.0.1", 0),
        sender=SenderConfig(**{"poll_interval": timedelta(seconds=1), **sender}),
    )


def config_toml(
    db_url: str, base_url: str, *, rate: float = 5000, cloud_hook_auth: bool = False, **sender: Any
) -> str:
    """The same two channels as a TOML file for `outbox run` in a subprocess; with
    `cloud_hook_auth`, the cloud channel expects Basic auth (TEST_HOOK_USER, TEST_HOOK_PASS)."""
    sender_lines = "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {"poll_interval": 1, **sender}.items()
    )
    cloud_hook = (
        'webhook_username_env = "TEST_HOOK_USER"\nwebhook_password_env = "TEST_HOOK_PASS"'
        if cloud_hook_auth
        else 'webhook_auth = "none"'
    )
    return f"""
database_url = {json.dumps(db_url)}

[http]
host = "127.0.0.1"
port = 0

[sender]
{sender_lines}
[[channels]]
id = "onprem"
dialect = "onprem"
base_url = {json.dumps(base_url)}
api_key_env = "TEST_ONPREM_KEY"
namespace = "{NAMESPACE}"
rate_per_second = {rate}
webhook_auth = "none"

[[channels]]
id = "cloud"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_env = "TEST_CLOUD_KEY"
rate_per_second = {rate}
{cloud_hook}
"""


SUBPROCESS_ENV = {"TEST_ONPREM_KEY": "onprem-key", "TEST_CLOUD_KEY": "cloud-key"}


# Fixture rows in any state (`outbox.trusted_insert`, honoured for the table's owner only:
# migration 0020). Set for the suite's role on each server, so a test writes rows as the
# daemon left them; tests of the producer's limits turn it off in their session.
TRUST_FIXTURE_ROWS = "ALTER ROLE CURRENT_USER SET outbox.trusted_insert = 'on'"
PRODUCER_SESSION = "SET outbox.trusted_insert = 'off'"


async def insert(
    db_url: str,
    channel: str,
    recipient: str,
    payload: Mapping[str, Any],
    *,
    inbound_ago: timedelta | None = timedelta(minutes=1),
    **columns: Any,
) -> int:
    """Insert one row as a producer would; by default the recipient wrote `inbound_ago` ago,
    so the 24-hour window is open (None: no inbound message on record)."""
    if inbound_ago is not None:
        await set_last_inbound(db_url, channel, recipient, inbound_ago)
    names = ["channel", "recipient", "payload", *columns]
    values: list[Any] = [channel, recipient, json.dumps(payload), *columns.values()]
    placeholders = ", ".join(
        f"${i}::jsonb" if name in ("payload", "fallback_template", "metadata") else f"${i}"
        for i, name in enumerate(names, start=1)
    )
    connection = await asyncpg.connect(db_url)
    try:
        return int(
            await connection.fetchval(
                f"INSERT INTO outbox.messages ({', '.join(names)}) "
                f"VALUES ({placeholders}) RETURNING id",
                *values,
            )
        )
    finally:
        await connection.close()


async def set_last_inbound(db_url: str, channel: str, recipient: str, ago: timedelta) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
        "VALUES ($1, regexp_replace($2, '[^0-9]', '', 'g'), now() - $3::interval) "
        "ON CONFLICT (channel, wa_id) DO UPDATE SET last_inbound_at = excluded.last_inbound_at",
        channel,
        recipient,
        ago,
    )


async def fetch(db_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(db_url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def row(db_url: str, message_id: int) -> asyncpg.Record:
    rows = await fetch(db_url, "SELECT * FROM outbox.messages WHERE id = $1", message_id)
    return rows[0]


async def drain(settings: Settings) -> None:
    """Run the sender in-process until nothing is claimable."""
    await asyncio.wait_for(app.run(settings, asyncio.Event(), roles={"sender"}, drain=True), 60)


@asynccontextmanager
async def running(settings: Settings, roles: set[str] | None = None) -> AsyncIterator[app.Started]:
    """The daemon in-process, until the block ends."""
    stop = asyncio.Event()
    started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        app.run(settings, stop, roles=roles or {"sender"}, on_started=started.set_result)
    )
    try:
        yield await asyncio.wait_for(asyncio.shield(started), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def sending(sender: Sender) -> AsyncIterator[Sender]:
    """`sender` running for the block, stopped (and its stop awaited) at the block's end."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield sender
    finally:
        stop.set()
        await task


async def wait_until(predicate: Any, within: float = 20.0, interval: float = 0.02) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def wait_for_progress(
    measure: Any,
    target: int,
    *,
    stall: float = 30.0,
    interval: float = 0.2,
    daemons: Sequence[asyncio.subprocess.Process] = (),
) -> None:
    """Wait until `measure()` (a count that only grows) reaches `target`; fail if it stops
    growing for `stall` seconds, or if one of `daemons` exits. A fixed deadline measures the
    machine: on 2 starved cores a correct drain can take several times its quiet duration,
    while a wedge is a stall at any speed."""
    loop = asyncio.get_running_loop()
    best, since = -1, loop.time()
    while True:
        exited = [p.returncode for p in daemons if p.returncode is not None]
        assert not exited, f"a daemon exited ({exited}) at {best} of {target}"
        value = measure()
        if asyncio.iscoroutine(value):
            value = await value
        if value >= target:
            return
        if value > best:
            best, since = value, loop.time()
        elif loop.time() - since > stall:
            raise AssertionError(f"stalled at {value} of {target} for {stall:g} s")
        await asyncio.sleep(interval)


# Claims as the shared bucket timed them. The bucket reads the database's clock under its row
# lock and writes that reading to `refilled_at` in the claim's transaction; a deferred trigger
# copies it at commit, while the lock is still held, so each claimed row gets the exact time
# the limit was applied at. Neither the test process nor the sandbox is on this path: their
# clocks stall when the machine is starved and bunch arrivals that were spread out.
_RECORD_CLAIMS = """
CREATE TABLE public.claims (
    message_id bigint NOT NULL, channel text NOT NULL, at timestamptz NOT NULL
);
CREATE FUNCTION public.record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.claims
    SELECT NEW.id, NEW.channel, s.refilled_at
    FROM outbox.channel_state AS s WHERE s.channel = NEW.channel;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER record_claim AFTER UPDATE OF state ON outbox.messages
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.state = 'queued' AND NEW.state = 'sending')
    EXECUTE FUNCTION public.record_claim();
"""


async def record_claims(db_url: str) -> None:
    """From now on, note when each row is claimed by the bucket's clock (see `claims`)."""
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(_RECORD_CLAIMS)
    finally:
        await connection.close()


async def claims(db_url: str, channel: str | None = None) -> list[tuple[int, float]]:
    """(message id, seconds since the epoch by the bucket's clock) of each claim noted since
    `record_claims`, in claim order."""
    rows = await fetch(
        db_url,
        "SELECT message_id, extract(epoch FROM at)::float8 AS at FROM public.claims"
        " WHERE $1::text IS NULL OR channel = $1 ORDER BY at, message_id",
        channel,
    )
    return [(r["message_id"], r["at"]) for r in rows]


def busiest_second(times: list[float]) -> int:
    """The most events any 1-second window [t, t + 1) of a log of times holds."""
    times = sorted(times)
    busiest, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


# Every recipient wrote a minute ago, so the free-form messages are inside the 24-hour window.
# $1 rows numbered after $2, alternately on 'cloud' and 'onprem' unless $3 names one channel.
_ENQUEUE_IN_WINDOW = """
WITH rows AS (
    SELECT coalesce($3::text, CASE WHEN g % 2 = 0 THEN 'cloud' ELSE 'onprem' END) AS channel,
           '49151' || lpad(g::text, 8, '0') AS recipient, g
    FROM generate_series($2::int + 1, $2::int + $1::int) AS g
), inbound AS (
    INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
    SELECT channel, recipient, now() - interval '1 minute' FROM rows
)
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT channel, recipient,
       jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', 'n' || g))
FROM rows
"""


async def enqueue_in_window(
    db_url: str, count: int, *, after: int = 0, channel: str | None = None
) -> None:
    """`count` free-form rows to distinct recipients whose window is open, in one INSERT."""
    await fetch(db_url, _ENQUEUE_IN_WINDOW, count, after, channel)


async def run_process(
    *argv: str, within: float = 60, stdin: Any = asyncio.subprocess.DEVNULL, **options: Any
) -> tuple[int, str, str]:
    """Run a command to its end: exit code, stdout, stderr. One that overruns `within` seconds (or
    whose test is cancelled) is killed and reaped before the error propagates: a process left
    running would close its pipes in some later test, and fail that one with a ResourceWarning."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        **options,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        await reap(process)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill a child that still runs, then collect it and close its pipes; shielded, so that a
    cancelled or timed-out test still does it."""
    if process.returncode is None:
        process.kill()
    await asyncio.shield(process.communicate())


async def spawn_daemon(
    config: Path,
    log: Path,
    roles: str = "sender",
    env: Mapping[str, str] = SUBPROCESS_ENV,
    **options: Any,
) -> asyncio.subprocess.Process:
    """`outbox run` as operators start it, logging JSON to `log` so tests can read events;
    `options` go to the subprocess (e.g. `preexec_fn` setting resource limits)."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox",
            "run",
            "--config",
            str(config),
            "--role",
            roles,
            stdout=out,
            stderr=out,
            env={**os.environ, **env, "OUTBOX_LOG_FORMAT": "json"},
            stdin=asyncio.subprocess.DEVNULL,
            **options,
        )


async def stop_daemon(process: asyncio.subprocess.Process, log: Path) -> int:
    """SIGTERM, then the exit code; a daemon that does not stop within 60 s fails the test."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"daemon did not stop; log:\n{log.read_text()[-3000:]}") from None


async def daemon_started(process: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    """The daemon's `outbox.started` log line (worker_id, http_port, schema, ...), once written."""
    for _ in range(600):
        assert process.returncode is None, log.read_text()[-3000:]
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"outbox.started"' in line:
                event: dict[str, Any] = json.loads(line)
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"no outbox.started line; log:\n{log.read_text()[-3000:]}")


async def daemon_http_port(process: asyncio.subprocess.Process, log: Path) -> int:
    """The port `[http] port = 0` picked, from the daemon's `outbox.started` log line."""
    return int((await daemon_started(process, log))["http_port"])


def accepted_count(log: Path) -> int:
    """How many rows a daemon that stopped cleanly says it got accepted (`outbox.sender.stopped`)."""
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "outbox.sender.stopped":
                return int(event.get("accepted", 0))
    raise AssertionError(f"no outbox.sender.stopped line in {log}")


async def listener_count(db_url: str) -> int:
    """Daemons whose NOTIFY listener is connected: they are woken by the next INSERT."""
    rows = await fetch(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outbox:listener'",
    )
    return int(rows[0][0])


async def readyz(port: int) -> tuple[int, str]:
    """A daemon's `/readyz`: the HTTP status and the reason it gives (empty when ready)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, (await response.json()).get("reason", "")


async def outbox_command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """One `outbox` command as an operator runs it: exit code, stdout, stderr."""
    return await run_process(
        sys.executable, "-m", "outbox", *args, env={**os.environ, **SUBPROCESS_ENV, **(env or {})}
    )


def cloud_on_account(
    settings: Settings, phone_number_id: str, waba_id: str, *, basic_auth: bool = True
) -> Settings:
    """`settings` whose cloud channel lives at `phone_number_id` in WABA `waba_id` (POST
    /webhooks routes by these), with Basic-auth credentials hook-user / hook-pass-0123456789."""
    onprem, cloud = settings.channels
    cloud = replace(cloud, phone_number_id=phone_number_id, waba_id=waba_id)
    if basic_auth:
        cloud = replace(
            cloud,
            webhook_username=Secret("hook-user"),
            webhook_password=Secret("hook-pass-0123456789"),
            webhook_auth=WebhookAuth.BASIC,
        )
    return replace(settings, channels=(onprem, cloud))


def key_recording_api(seen: list[str]) -> aiohttp.web.Application:
    """An API whose `POST /messages` records each request's `D360-API-KEY` in `seen` and
    answers a message id."""

    async def messages(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers["D360-API-KEY"])
        return aiohttp.web.json_response({"messages": [{"id": "wamid.1"}]})

    app = aiohttp.web.Application()
    app.router.add_post("/messages", messages)
    return app


async def loopback_site(
    app: aiohttp.web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[aiohttp.web.AppRunner, str]:
    """`app` served on a free loopback port (over TLS with `ssl_context`): its runner (to clean
    up) and its base URL."""
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
