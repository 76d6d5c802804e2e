"""Issue 19 §1 end to end: the daemon split as README "Database roles" 2b says. A public
`--role web` process runs as `outbox_web` (only the webhook INSERT, the registry's columns
without API keys, the schema revision) on a host where no API key file exists, and takes
webhooks for a file channel and for a registry channel with sealed credentials; a
`--role sender,reconciler` process runs as `outbox_daemon`, sends through the sandbox, applies
the stored statuses, and serves its metrics on `admin_listen` only."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from outbox.config import ChannelConfig, Secret
from outbox.db.engine import create_engine
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect
from outbox.sandbox import Sandbox
from outbox.sealing import Keyring, generate_key
from tests.roles import DAEMON, WEB, Roles, scoped_roles
from tests.support import (
    KEYS,
    daemon_started,
    fetch,
    readyz,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = pytest.mark.slow

HOOK = ("shop-hooks", "shop-hook-password-0123")
SEALED_HOOK = ("reg-hooks", "reg-hook-password-4567")


def _config(database_url: str, base_url: str, key_file: Path, admin: bool) -> str:
    return f"""
database_url = {json.dumps(database_url)}

[http]
host = "127.0.0.1"
port = 0
{'admin_listen = "127.0.0.1:0"' if admin else ""}

[sender]
poll_interval = 1

[[channels]]
id = "shop-de"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_file = {json.dumps(str(key_file))}
rate_per_second = 1000
webhook_username_env = "TEST_HOOK_USER"
webhook_password_env = "TEST_HOOK_PASS"
"""


@pytest.fixture
async def roles(db_url: str) -> AsyncIterator[Roles]:
    async with scoped_roles(db_url) as made:
        await made.run(DAEMON, WEB)
        yield made


def _status(wamid: str, status: str) -> dict[str, Any]:
    item = {"id": wamid, "recipient_id": "4915112345678", "status": status, "timestamp": "1"}
    value = {"messaging_product": "whatsapp", "metadata": {}, "statuses": [item]}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


async def _post(port: int, channel: str, body: object, auth: tuple[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/{channel}",
            json=body,
            headers={
                "Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()
            },
        ) as response,
    ):
        return response.status


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def _add_sealed_channel(db_url: str, keyring: Keyring, base_url: str) -> None:
    engine = create_engine(db_url, pool_size=1)
    try:
        channel = ChannelConfig(
            "reg-a",
            Dialect.CLOUD,
            base_url,
            Secret("cloud-key"),
            webhook_username=Secret(SEALED_HOOK[0]),
            webhook_password=Secret(SEALED_HOOK[1]),
        )
        await ChannelRegistryStore(engine, keyring).add(channel, enabled=True)
    finally:
        await engine.dispose()


async def test_a_receiver_without_keys_and_a_sender_split_by_role(
    roles: Roles, db_url: str, tmp_path: Path
) -> None:
    api = Sandbox(KEYS)
    base_url = await api.start()
    master = generate_key()
    await _add_sealed_channel(db_url, Keyring([base64.urlsafe_b64decode(master)]), base_url)
    key_file = tmp_path / "cloud.key"
    key_file.write_text("cloud-key\n")
    key_file.chmod(0o600)
    web_config, daemon_config = tmp_path / "web.toml", tmp_path / "daemon.toml"
    # The receiver's host has no key file: the same path, never written there.
    web_config.write_text(
        _config(roles.url("outbox_web"), base_url, tmp_path / "not-mounted.key", False)
    )
    daemon_config.write_text(_config(roles.url("outbox_daemon"), base_url, key_file, True))
    env = {
        "TEST_HOOK_USER": HOOK[0],
        "TEST_HOOK_PASS": HOOK[1],
        "OUTBOX_SECRET_KEY_ENV": "TEST_MASTER",
        "TEST_MASTER": master,
    }
    web_log, daemon_log = tmp_path / "web.log", tmp_path / "daemon.log"
    web = await spawn_daemon(web_config, web_log, roles="web", env=env)
    daemon = await spawn_daemon(daemon_config, daemon_log, roles="sender,reconciler", env=env)
    try:
        web_started = await daemon_started(web, web_log)
        daemon_started_line = await daemon_started(daemon, daemon_log)
        port = int(web_started["http_port"])
        [queued] = await fetch(
            db_url,
            "INSERT INTO outbox.messages (channel, recipient, payload) VALUES ('shop-de',"
            """ '4915112345678', '{"type": "template", "template": {"name": "otp","""
            """ "language": {"code": "en"}}}') RETURNING id""",
        )
        message_id = queued["id"]
        await wait_until(lambda: _wamid(db_url, message_id), within=60)
        wamid = await _wamid(db_url, message_id)
        assert wamid is not None
        assert await _post(port, "shop-de", _status(wamid, "delivered"), HOOK) == 200
        await wait_until(lambda: _state_is(db_url, message_id, "delivered"), within=60)
        # The registry's channel: its sealed credentials opened, the wrong ones refused.
        assert await _post(port, "reg-a", _status("wamid.X", "sent"), SEALED_HOOK) == 200
        assert await _post(port, "reg-a", _status("wamid.X", "sent"), HOOK) == 401
        assert (await readyz(port))[0] == 200
        admin_port = int(daemon_started_line["admin_port"])
        exposition = await _metrics(admin_port)
        assert "outbox_backlog_messages{" in exposition
        # Issue 16: `outbox run` collects its young generation every 10,000 allocations, not
        # CPython's 700: its start-up and this run then take tens of collections, not hundreds.
        young = re.search(
            r'^python_gc_collections_total\{generation="0"\} (\S+)$', exposition, re.M
        )
        assert young is not None
        assert float(young.group(1)) < 150  # 265 with CPython's setting
        assert "outbox_backlog_messages{" not in await _metrics(port)  # no queue gauges here
    finally:
        web_code = await stop_daemon(web, web_log)
        daemon_code = await stop_daemon(daemon, daemon_log)
        await api.stop()
    assert (web_code, daemon_code) == (0, 0), web_log.read_text()[-3000:]
    assert daemon_started_line["http_port"] is None  # no public listener without the web role
    assert web_started["admin_port"] is None
    for log in (web_log, daemon_log):
        text = log.read_text()
        for trouble in ("permission denied", "statement_invalid", "InsufficientPrivilege"):
            assert trouble not in text, (log.name, trouble, text[-3000:])
    events = [json.loads(line) for line in web_log.read_text().splitlines() if line[:1] == "{"]
    troubles = {e["event"] for e in events if e["level"] in ("warning", "error", "critical")}
    # The one refused body (wrong credentials) is the receiver's only complaint.
    assert troubles <= {"outbox.webhook.rejected"}, troubles
    assert "outbox.sampler.off" in {e["event"] for e in events}  # it may not read the queue
    assert [r.body["type"] for r in api.message_requests()] == ["template"]


async def _wamid(db_url: str, message_id: int) -> str | None:
    [found] = await fetch(db_url, "SELECT wamid FROM outbox.messages WHERE id = $1", message_id)
    return found["wamid"]  # type: ignore[no-any-return]


async def _state_is(db_url: str, message_id: int, state: str) -> bool:
    [found] = await fetch(db_url, "SELECT state FROM outbox.messages WHERE id = $1", message_id)
    return bool(found["state"] == state)
