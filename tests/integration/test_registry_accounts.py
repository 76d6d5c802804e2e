"""A channel added to the registry while the daemon runs is routed by POST /webhooks and its
template events are keyed by its WABA, as the sender's holds look them up (the reconciler
follows the directory, not the channels it started with)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect
from outbox.sandbox.waba_events import template_status, waba_body
from outbox.sealing import Keyring, generate_key
from tests.integration.test_webhooks import _post, basic
from tests.support import fetch, running, settings_for, wait_until


@pytest.fixture
def keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keyring:
    key = generate_key()
    (tmp_path / "master.key").write_text(key)
    monkeypatch.setenv("OUTBOX_SECRET_KEY_FILE", str(tmp_path / "master.key"))
    return Keyring([base64.urlsafe_b64decode(key)])


async def test_a_registry_channels_template_events_are_keyed_by_its_waba(
    db_url: str, engine: AsyncEngine, keyring: Keyring
) -> None:
    settings = settings_for(db_url, "http://127.0.0.1:9")
    auth = basic("reg-hooks", "reg-hook-pass")
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
            webhook_password=Secret("reg-hook-pass"),
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
