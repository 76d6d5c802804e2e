"""`outbox channels import` and `rotate-key` as an operator runs them: real processes, the real
registry in PostgreSQL, the sandbox's Partner API on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.registry import ChannelRegistryStore
from outbox.sandbox import Sandbox
from outbox.sandbox.hub import Hub
from outbox.sealing import Keyring, generate_key
from tests.support import fetch, outbox_command, reap

PARTNER, PARTNER_KEY = "testPA", "partner-key-never-logged"
MASTER = generate_key()
HOOKS = "http://127.0.0.1:9/webhooks/{channel}"


@dataclass
class Partner:
    sandbox: Sandbox
    hub: Hub
    url: str
    config: Path
    env: dict[str, str]

    def registry(self, engine: AsyncEngine) -> ChannelRegistryStore:
        return ChannelRegistryStore(engine, Keyring([base64.urlsafe_b64decode(MASTER)]))

    async def run(self, *args: str, **env: str) -> tuple[int, str, str]:
        return await outbox_command(*args, "--config", str(self.config), env={**self.env, **env})


def partner_toml(db_url: str, url: str) -> str:
    return f"""
database_url = {json.dumps(db_url)}

[partner]
partner_id = "{PARTNER}"
api_key_env = "TEST_PARTNER_KEY"
base_url = "{url}/api/v2"
webhook_url = "{HOOKS}"
"""


@pytest.fixture
async def partner(db_url: str, tmp_path: Path) -> AsyncIterator[Partner]:
    sandbox = Sandbox({}, statuses=False)
    hub = Hub(sandbox, PARTNER, PARTNER_KEY)
    hub.populate(30, clients=3)
    hub.channels["CH00005"].permission = False
    url = await sandbox.start()
    config = tmp_path / "partner.toml"
    config.write_text(partner_toml(db_url, url))
    env = {
        "TEST_PARTNER_KEY": PARTNER_KEY,
        "TEST_MASTER": MASTER,
        "OUTBOX_SECRET_KEY_ENV": "TEST_MASTER",
    }
    try:
        yield Partner(sandbox, hub, url, config, env)
    finally:
        await sandbox.stop()


async def test_import_pages_through_every_channel_once_and_again_changes_nothing(
    partner: Partner, engine: AsyncEngine, db_url: str
) -> None:
    code, out, err = await partner.run("channels", "import", "--page-size", "7", "--enable")
    assert code == 0, err
    assert out.splitlines()[0] == "listed 30: 29 imported, 0 known, 1 skipped, 0 failed"
    assert "CH00005: skipped at 'create a new API key (Partner API)': no partner permission" in out
    listings = [c for c in partner.hub.calls if c.path.endswith("/channels")]
    assert len(listings) == 5  # 7 + 7 + 7 + 7 + 2

    registry = partner.registry(engine)
    row = await registry.get("CH00017")
    assert row is not None
    assert row.enabled
    key = partner.hub.current_key("CH00017")
    assert key is not None
    assert row.config.api_key.reveal() == key
    assert row.config.base_url == partner.url
    assert (row.config.partner_channel_id, row.config.client_id) == ("CH00017", "CL002")
    assert (row.config.waba_id, row.config.phone_number_id) == ("1000000017", "2000000017")
    hook = partner.sandbox.webhook(key)
    assert hook is not None
    assert hook.url == "http://127.0.0.1:9/webhooks/CH00017"
    assert hook.headers["Authorization"].startswith("Basic ")
    dump = repr([dict(r) for r in await fetch(db_url, "SELECT * FROM outbox.channels")])
    for channel in partner.hub.channels.values():
        for each in channel.keys:
            assert each not in dump
    for text in (out, err):
        assert PARTNER_KEY not in text
        assert key not in text

    issued = sum(len(c.keys) for c in partner.hub.channels.values())
    code, out, err = await partner.run("channels", "import", "--json")
    assert code == 0, err
    outcomes = [c["outcome"] for c in json.loads(out)["channels"]]
    assert outcomes.count("known") == 29
    assert outcomes.count("skipped") == 1
    assert sum(len(c.keys) for c in partner.hub.channels.values()) == issued


async def test_import_takes_filters(partner: Partner, engine: AsyncEngine) -> None:
    code, out, err = await partner.run(
        "channels", "import", "--filter", "client_id=CL001", "--id-prefix", "acme-"
    )
    assert code == 0, err
    assert out.startswith("listed 10: 10 imported")
    row = await partner.registry(engine).get("acme-CH00001")
    assert row is not None
    assert not row.enabled  # added disabled without --enable


async def test_rotate_key_switches_to_a_new_stored_key_with_its_webhook(
    partner: Partner, engine: AsyncEngine
) -> None:
    code, _, err = await partner.run("channels", "import", "--filter", "id=CH00003", "--enable")
    assert code == 0, err
    old = partner.hub.current_key("CH00003")
    code, out, err = await partner.run("channels", "rotate-key", "CH00003", "--settle", "0")
    assert code == 0, err
    assert out.startswith("CH00003: rotate-key done, channel switched")
    new = partner.hub.current_key("CH00003")
    assert new != old
    row = await partner.registry(engine).get("CH00003")
    assert row is not None
    assert row.enabled
    assert row.config.api_key.reveal() == new
    assert new is not None
    hook = partner.sandbox.webhook(new)
    assert hook is not None
    assert hook.url == "http://127.0.0.1:9/webhooks/CH00003"
    assert [c.path for c in partner.hub.calls[-1:]] == ["/health_status"]


@pytest.mark.parametrize(
    ("fault", "step", "after"),
    [
        ((403, "/api_keys"), "create a new API key", "unchanged"),
        ((404, "/api_keys"), "create a new API key", "unchanged"),
        ((401, "/api_keys"), "create a new API key", "unchanged"),
    ],
)
async def test_rotate_key_refused_says_which_step_and_leaves_the_channel_usable(
    partner: Partner, engine: AsyncEngine, fault: tuple[int, str], step: str, after: str
) -> None:
    code, _, err = await partner.run("channels", "import", "--filter", "id=CH00004", "--enable")
    assert code == 0, err
    old = partner.hub.current_key("CH00004")
    partner.hub.fail(*fault)
    code, out, err = await partner.run("channels", "rotate-key", "CH00004", "--settle", "0")
    assert code == 1
    assert f"failed at step '{step}" in out
    assert f"the channel is now {after}" in out
    row = await partner.registry(engine).get("CH00004")
    assert row is not None
    assert row.enabled
    assert row.config.api_key.reveal() == old == partner.hub.current_key("CH00004")


async def test_a_blocked_number_leaves_the_channel_paused_with_the_new_key(
    partner: Partner, engine: AsyncEngine
) -> None:
    code, _, err = await partner.run("channels", "import", "--filter", "id=CH00006", "--enable")
    assert code == 0, err
    partner.hub.channels["CH00006"].health = "BLOCKED"
    code, out, _ = await partner.run("channels", "rotate-key", "CH00006", "--settle", "0")
    assert code == 1
    assert "failed at step 'check the number (GET /health_status)'" in out
    assert "the channel is now paused" in out
    row = await partner.registry(engine).get("CH00006")
    assert row is not None
    assert not row.enabled
    assert row.config.api_key.reveal() == partner.hub.current_key("CH00006")


@pytest.mark.parametrize(
    ("env", "code", "words"),
    [
        ({"TEST_PARTNER_KEY": "wrong"}, 1, "refused the partner API key"),
        ({"TEST_PARTNER_KEY": ""}, 2, "TEST_PARTNER_KEY"),
    ],
)
async def test_clear_errors_and_no_state_when_the_partner_api_refuses(
    partner: Partner, db_url: str, env: dict[str, str], code: int, words: str
) -> None:
    got, out, err = await partner.run("channels", "import", **env)
    assert got == code, (out, err)
    assert words in err
    assert await fetch(db_url, "SELECT id FROM outbox.channels") == []


async def test_a_rate_limited_listing_is_retried_after_its_hint(partner: Partner) -> None:
    partner.hub.fail(429, "/channels", times=2, retry_after=0.2)
    partner.hub.fail(502, "/channels", times=1)
    code, out, err = await partner.run("channels", "import", "--filter", "client_id=CL002")
    assert code == 0, err
    assert out.startswith("listed 10: 9 imported, 0 known, 1 skipped")  # CH00005 is CL002's


async def test_outbox_sandbox_serves_the_partner_api_that_channels_import_uses(
    tmp_path: Path, engine: AsyncEngine, db_url: str
) -> None:
    """A partner tries onboarding on a laptop: `outbox sandbox --partner-id` serves the Partner
    API as a process of its own, `channels import` takes its numbers, and the keys it made
    send through that same sandbox."""
    env = {**os.environ, "TEST_PARTNER_KEY": PARTNER_KEY}
    argv = ["--port", "0", "--partner-id", PARTNER, "--partner-key-env", "TEST_PARTNER_KEY"]
    argv += ["--partner-channels", "12", "--partner-clients", "2"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", "sandbox", *argv, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        said = ""
        while "Partner API for" not in said:
            line = await asyncio.wait_for(process.stderr.readline(), 60)
            assert line, said
            said += line.decode()
        [url] = re.findall(r"serving on (http://\S+)", said)
        assert f"Partner API for {PARTNER} at {url}/api/v2 (12 numbers over 2 clients)" in said
        assert PARTNER_KEY not in said
        assert PARTNER_KEY.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()

        config = tmp_path / "partner.toml"
        config.write_text(partner_toml(db_url, url))
        env_for_import = {"TEST_PARTNER_KEY": PARTNER_KEY, "TEST_MASTER": MASTER}
        env_for_import["OUTBOX_SECRET_KEY_ENV"] = "TEST_MASTER"
        code, out, err = await outbox_command(
            "channels", "import", "--filter", "client_id=CL001", "--enable",
            "--config", str(config), env=env_for_import,
        )  # fmt: skip
        assert code == 0, err
        assert out.splitlines()[0] == "listed 6: 6 imported, 0 known, 0 skipped, 0 failed"

        registry = ChannelRegistryStore(engine, Keyring([base64.urlsafe_b64decode(MASTER)]))
        row = await registry.get("CH00003")
        assert row is not None
        assert row.enabled
        assert row.config.base_url == url
        text = {"body": "hello"}
        message = {
            "messaging_product": "whatsapp",
            "to": "4915100000001",
            "type": "text",
            "text": text,
        }
        async with aiohttp.ClientSession() as session:
            for key, status in ((row.config.api_key.reveal(), 200), ("not-a-key", 401)):
                async with session.post(
                    f"{url}/messages", json=message, headers={"D360-API-KEY": key}
                ) as answer:
                    assert answer.status == status
    finally:
        await reap(process)


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--partner-id", "p"], {}, "--partner-id needs --partner-key-env"),
        (["--partner-key-env", "K"], {"K": "k"}, "--partner-key-env needs --partner-id"),
        (["--partner-id", "p", "--partner-key-env", "NOPE_UNSET"], {}, "NOPE_UNSET is not set"),
        (
            ["--partner-id", "p", "--partner-key-env", "K", "--partner-clients", "0"],
            {"K": "k"},
            "--partner-clients: 1 to 1000",
        ),
    ],
)
async def test_outbox_sandbox_refuses_a_partner_api_it_cannot_serve(
    argv: list[str], env: dict[str, str], words: str
) -> None:
    code, _, err = await outbox_command("sandbox", "--port", "0", *argv, env=env)
    assert code == 2
    assert words in err


async def test_import_refuses_more_at_once_than_the_client_has_connections(
    partner: Partner,
) -> None:
    code, _, err = await partner.run("channels", "import", "--concurrency", "101")
    assert code == 2
    assert "--concurrency: at most 100" in err
    assert partner.hub.calls == []
