"""Registry changes reach a running daemon's parts: a paused channel whose key changed probes
at once, the webhook receiver takes bodies for a channel added while it runs, and that
channel's template events are keyed by its WABA, as the sender's holds look them up (the
reconciler follows the directory, not the channels it started with)."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect
from outbox.sandbox import Sandbox
from outbox.sandbox.waba_events import template_status, waba_body
from outbox.sealing import Keyring, generate_key
from tests.integration.test_webhooks import _post, basic
from tests.support import KEYS, enqueue_in_window, fetch, running, settings_for, wait_until


@pytest.fixture
def keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keyring:
    key = generate_key()
    (tmp_path / "master.key").write_text(key)
    monkeypatch.setenv("OUTBOX_SECRET_KEY_FILE", str(tmp_path / "master.key"))
    return Keyring([base64.urlsafe_b64decode(key)])


def _reg(base_url: str, key: str) -> ChannelConfig:
    return ChannelConfig(
        "reg",
        Dialect.CLOUD,
        base_url,
        Secret(key),
        500.0,
        webhook_username=Secret("reg-hooks"),
        webhook_password=Secret("reg-hook-pass-0123456789"),
    )


async def _accepted(db_url: str, count: int) -> bool:
    rows = await fetch(
        db_url, "SELECT count(*) FROM outbox.messages WHERE channel = 'reg' AND state = 'accepted'"
    )
    return int(rows[0][0]) == count


async def _paused(db_url: str) -> bool:
    rows = await fetch(
        db_url, "SELECT paused_until FROM outbox.channel_state WHERE channel = 'reg'"
    )
    return bool(rows) and rows[0][0] is not None


async def test_a_paused_channel_whose_key_changed_in_the_registry_probes_at_once(
    db_url: str, engine: AsyncEngine, keyring: Keyring
) -> None:
    api = Sandbox({**KEYS, "reg-good-key": "reg"})
    base_url = await api.start()
    store = ChannelRegistryStore(engine, keyring)
    try:
        await store.add(_reg(base_url, "reg-revoked-key"), enabled=True)
        await enqueue_in_window(db_url, 20, channel="reg")
        settings = settings_for(db_url, base_url, breaker_cooldown=timedelta(minutes=10))
        async with running(settings):
            await wait_until(lambda: _paused(db_url), within=20)
            await store.set_api_key("reg", Secret("reg-good-key"))
            changed = time.monotonic()
            await wait_until(lambda: _accepted(db_url, 20), within=10)
            took = time.monotonic() - changed
    finally:
        await api.stop()
    assert took < 2.0, f"{took:.2f} s from the new key to every row sent (cool-down: 10 min)"
    labels = [r.api_key_label for r in api.message_requests()]
    assert labels.count("reg") == 20  # after the switch every request carries the new key
    assert labels[labels.index("reg") :] == ["reg"] * 20


async def test_the_webhook_receiver_takes_a_channel_added_while_it_runs(
    db_url: str, engine: AsyncEngine, keyring: Keyring
) -> None:
    settings = settings_for(db_url, "http://127.0.0.1:9")
    auth = basic("reg-hooks", "reg-hook-pass-0123456789")
    async with running(settings, {"web"}) as started:
        url = f"http://127.0.0.1:{started.http_port}/webhooks/reg"
        assert await _post(url, b"{}", auth) == 401  # unknown: as wrong credentials
        await ChannelRegistryStore(engine, keyring).add(
            _reg("http://127.0.0.1:9", "k"), enabled=False
        )
        added = time.monotonic()
        await wait_until(lambda: _status_is(url, auth, 200), within=5)
        took = time.monotonic() - added
        assert await _post(url, b"{}", basic("reg-hooks", "wrong")) == 401
    assert took < 2.0


async def _status_is(url: str, auth: str, status: int) -> bool:
    return await _post(url, b"{}", auth) == status


async def test_a_registry_channels_template_events_are_keyed_by_its_waba(
    db_url: str, engine: AsyncEngine, keyring: Keyring
) -> None:
    settings = settings_for(db_url, "http://127.0.0.1:9")
    auth = basic("reg-hooks", "reg-hook-pass-0123456789")
    body = waba_body(
        "message_template_status_update", template_status("promo", "en_US", "PAUSED"), "waba-reg"
    )
    async with running(settings, {"web", "reconciler"}) as started:
        url = f"http://127.0.0.1:{started.http_port}/webhooks"
        reg = ChannelConfig(
            "reg",
            Dialect.CLOUD,
            "http://127.0.0.1:9",
            Secret("k"),
            500.0,
            webhook_username=Secret("reg-hooks"),
            webhook_password=Secret("reg-hook-pass-0123456789"),
            phone_number_id="pn-reg",
            waba_id="waba-reg",
        )
        await ChannelRegistryStore(engine, keyring).add(reg, enabled=True)

        async def keyed() -> bool:
            await _post(url, json.dumps(body).encode(), auth)
            rows = await fetch(db_url, "SELECT waba_id, status FROM outbox.templates")
            return bool(rows)

        await wait_until(keyed, within=10)
    rows = await fetch(db_url, "SELECT waba_id, name, status FROM outbox.templates")
    assert [(r["waba_id"], r["name"], r["status"]) for r in rows] == [
        ("waba-reg", "promo", "PAUSED")
    ]
    logged = await fetch(db_url, "SELECT DISTINCT channel, effect FROM outbox.account_events")
    assert {(r["channel"], r["effect"]) for r in logged} == {("reg", "template")}
