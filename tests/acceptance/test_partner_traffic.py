"""Issue 17's end-to-end claims for the Partner API verbs, with two `outbox run` replicas that
are never restarted: `channels import` of 250 numbers, then 1,000 rows across them all sent;
`rotate-key` under traffic loses and fails nothing, every request after the switch carries the
new key, and the webhook is registered again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from outbox.sandbox import Sandbox
from outbox.sandbox.hub import Hub
from outbox.sealing import generate_key
from tests.support import fetch, outbox_command, reap, spawn_daemon, stop_daemon, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PARTNER, PARTNER_KEY = "trafficPA", "partner-key-traffic"
MASTER = generate_key()
ENV = {
    "TEST_FILE_KEY": "file-key",
    "TEST_PARTNER_KEY": PARTNER_KEY,
    "TEST_MASTER": MASTER,
    "OUTBOX_SECRET_KEY_ENV": "TEST_MASTER",
}

# Templates need no open window: every row is sendable as soon as its channel is known.
_ENQUEUE = """
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT 'CH' || lpad((g % $2::int)::text, 5, '0'), '49170' || lpad(g::text, 8, '0'),
       '{"type": "template", "template": {"name": "otp", "language": {"code": "en"}}}'::jsonb
FROM generate_series($1::int + 1, $1::int + $3::int) AS g
"""


def config(db_url: str, url: str) -> str:
    return f"""
database_url = {json.dumps(db_url)}

[http]
host = "127.0.0.1"
port = 0

[sender]
poll_interval = 1

[partner]
partner_id = "{PARTNER}"
api_key_env = "TEST_PARTNER_KEY"
base_url = "{url}/api/v2"
webhook_url = "http://127.0.0.1:9/webhooks/{{channel}}"

# A small installation's file channel, next to the partner's numbers in the registry.
[[channels]]
id = "file"
dialect = "cloud"
base_url = "{url}"
api_key_env = "TEST_FILE_KEY"
webhook_auth = "none"
"""


async def states(db_url: str) -> dict[str, int]:
    rows = await fetch(db_url, "SELECT state::text, count(*) FROM outbox.messages GROUP BY 1")
    return {r[0]: int(r[1]) for r in rows}


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Sandbox, Hub, Path, Path]]:
    sandbox = Sandbox({"file-key": "file"}, statuses=False)
    hub = Hub(sandbox, PARTNER, PARTNER_KEY)
    hub.populate(250, clients=10)
    url = await sandbox.start()
    path = tmp_path / "outbox.toml"
    path.write_text(config(db_url, url))
    try:
        yield sandbox, hub, path, tmp_path
    finally:
        await sandbox.stop()


@asynccontextmanager
async def two_replicas(path: Path, tmp: Path) -> AsyncIterator[list[Path]]:
    """Two `outbox run` replicas for the whole test: started before any channel exists, and
    checked to be still the same processes (never restarted) at its end."""
    logs = [tmp / "replica-a.log", tmp / "replica-b.log"]
    replicas = [await spawn_daemon(path, log, env=ENV) for log in logs]
    try:
        yield logs
        for replica in replicas:
            assert replica.returncode is None
    finally:
        for replica, log in zip(replicas, logs, strict=True):
            await stop_daemon(replica, log)
            await reap(replica)


async def test_import_250_then_send_1000_with_no_restart(
    world: tuple[Sandbox, Hub, Path, Path], db_url: str
) -> None:
    sandbox, _, path, tmp = world
    async with two_replicas(path, tmp) as logs:
        started = time.monotonic()
        code, out, err = await outbox_command(
            "channels", "import", "--config", str(path), "--enable", "--concurrency", "8",
            "--rate", "200", env=ENV,
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith("listed 250: 250 imported, 0 known, 0 skipped, 0 failed")
        print(f"import of 250: {time.monotonic() - started:.1f} s")
        started = time.monotonic()

        await fetch(db_url, _ENQUEUE, 0, 250, 1000)
        await _sent(db_url, 1000, logs)
        print(f"1,000 rows over 250 channels sent in {time.monotonic() - started:.1f} s")
        assert (await states(db_url)) == {"accepted": 1000}
        per_channel = {r.api_key_label for r in sandbox.message_requests()}
        assert len(per_channel) == 250  # every imported number sent, each with its hub key
        assert all(label is not None and label.endswith("#1") for label in per_channel)


async def test_rotate_key_under_traffic_loses_and_fails_nothing(
    world: tuple[Sandbox, Hub, Path, Path], db_url: str
) -> None:
    sandbox, hub, path, tmp = world
    async with two_replicas(path, tmp) as logs:
        code, out, err = await outbox_command(
            "channels", "import", "--config", str(path), "--enable", "--filter", "client_id=CL002",
            "--rate", "200", env=ENV,
        )  # fmt: skip
        assert code == 0, err
        # Traffic on one number, the key rotated in the middle of it.
        stream = asyncio.create_task(_stream(db_url, "CH00042", 400, after=10_000))
        await asyncio.sleep(0.5)
        code, out, err = await outbox_command(
            "channels", "rotate-key", "CH00042", "--config", str(path), env=ENV
        )
        assert code == 0, (out, err)
        await stream
        await _sent(db_url, 400, logs)
        assert (await states(db_url)) == {"accepted": 400}  # nothing lost, nothing failed
        attempts = await fetch(
            db_url, "SELECT max(attempts) FROM outbox.messages WHERE channel = 'CH00042'"
        )
        assert attempts[0][0] == 1

        sent = sandbox.message_requests()
        assert all(r.api_key_label is not None for r in sent)  # none with a revoked key (401)
        labels = [r.api_key_label for r in sent if (r.api_key_label or "").startswith("CH00042#")]
        switch = labels.index("CH00042#2")
        assert set(labels[:switch]) == {"CH00042#1"}
        assert set(labels[switch:]) == {"CH00042#2"}  # every request after the switch: new key
        new_key = hub.current_key("CH00042")
        assert new_key is not None
        hook = sandbox.webhook(new_key)
        assert hook is not None
        assert hook.url == "http://127.0.0.1:9/webhooks/CH00042"


async def _sent(db_url: str, total: int, logs: list[Path]) -> None:
    async def done() -> bool:
        return (await states(db_url)).get("accepted", 0) == total

    try:
        await wait_until(done, within=90)
    except AssertionError:
        tails = "\n".join(log.read_text()[-2000:] for log in logs)
        queued = await fetch(
            db_url,
            "SELECT channel, count(*), max(attempts), bool_and(head), max(send_after), max(wa_id)"
            " FROM outbox.messages"
            " WHERE state = 'queued' GROUP BY 1",
        )
        shared = await fetch(db_url, "SELECT * FROM outbox.channel_state WHERE channel = 'CH00042'")
        raise AssertionError(
            f"not all sent: {await states(db_url)}\n{[dict(r) for r in queued]}\n"
            f"{[dict(r) for r in shared]}\n{tails}"
        ) from None


async def _stream(db_url: str, channel: str, count: int, *, after: int) -> None:
    """`count` rows for `channel`, four every 100 ms, as a steady producer writes them."""
    for batch in range(count // 4):
        await fetch(
            db_url,
            """INSERT INTO outbox.messages (channel, recipient, payload)
               SELECT $1, '49171' || lpad(g::text, 8, '0'),
                 '{"type": "template", "template": {"name": "otp", "language": {"code": "en"}}}'
               FROM generate_series($2::int, $2::int + 3) AS g""",
            channel,
            after + batch * 4,
        )
        await asyncio.sleep(0.1)
