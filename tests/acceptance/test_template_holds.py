"""Issue 18 end to end in the sandbox: a paused template holds its rows with no request and
lets them go within 2 s of `outbox templates resume`; a spam-limited channel (131048) keeps
sending its one-time passwords while its marketing waits."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.templates import TemplateStore
from outbox.domain.templates import TemplateKey
from outbox.sandbox.faults import Fault
from outbox.sandbox.server import Sandbox
from tests.support import config_toml, fetch, insert, outbox_command, running, settings_for
from tests.support import wait_until as _wait_until


def template(name: str) -> dict[str, Any]:
    return {"type": "template", "template": {"name": name, "language": {"code": "en_US"}}}


def sends_of(api: Sandbox, name: str) -> int:
    return sum(
        1
        for r in api.requests
        if r.path == "/messages"
        and isinstance(r.body, dict)
        and r.body.get("template", {}).get("name") == name
    )


async def count(db_url: str, where: str) -> int:
    [[n]] = await fetch(db_url, f"SELECT count(*) FROM outbox.messages WHERE {where}")
    return int(n)


async def has(db_url: str, where: str, n: int) -> bool:
    return await count(db_url, where) == n


async def test_a_paused_template_holds_its_rows_and_releases_them_on_resume(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    api, base_url = sandbox
    # The cloud channel has no waba_id: its templates live under its own id.
    paused = await TemplateStore(engine).record(
        TemplateKey("cloud", "promo", "en_US"), source="webhook", status="PAUSED"
    )
    ids = [
        await insert(db_url, "cloud", f"49151{n:08}", template("promo"), inbound_ago=None)
        for n in range(100)
    ]
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url))
    async with running(settings_for(db_url, base_url)):
        await _wait_until(
            lambda: has(db_url, f"held_template = {paused.info.id} AND state = 'queued'", 100)
        )
        assert await count(db_url, "held_template IS NOT NULL") == 100
        assert await count(db_url, "attempts > 0") == 0  # no attempt charged
        await asyncio.sleep(1.0)  # nothing more happens to them
        assert sends_of(api, "promo") == 0
        [[code]] = await fetch(db_url, "SELECT DISTINCT error_code FROM outbox.messages")
        assert code == "template_held"
        status, shown, err = await outbox_command("show", str(ids[0]), "--config", str(config))
        assert status == 0, err
        assert "waits for       template promo (en_US, PAUSED) to be active again" in shown

        status, out, err = await outbox_command(
            "templates", "resume", "promo", "--config", str(config)
        )
        assert status == 0, err
        assert "100 held rows back in the queue" in out
        # Timed from the command's exit (its own start-up, a Python process, is no latency of
        # the daemon's); the next test times the store method from the change itself.
        started = time.monotonic()
        await _wait_until(lambda: has(db_url, "state = 'accepted'", 100), within=10)
        released_in = time.monotonic() - started
    assert sends_of(api, "promo") == 100
    assert released_in < 2.0, released_in
    rows = await fetch(
        db_url, "SELECT attempts, held_template, message_status FROM outbox.messages"
    )
    assert {(r["attempts"], r["held_template"], r["message_status"]) for r in rows} == {
        (1, None, "accepted")
    }
    assert len(ids) == 100


async def test_release_by_the_store_method_comes_within_two_seconds(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    store = TemplateStore(engine)
    key = TemplateKey("cloud", "promo", "en_US")
    await store.record(key, source="webhook", status="PAUSED")
    for n in range(100):
        await insert(db_url, "cloud", f"49151{n:08}", template("promo"), inbound_ago=None)
    async with running(settings_for(db_url, base_url, poll_interval=timedelta(seconds=30))):
        await _wait_until(lambda: has(db_url, "held_template IS NOT NULL", 100))
        assert sends_of(api, "promo") == 0
        started = time.monotonic()
        # What h18events' webhook path calls for an APPROVED event.
        recorded = await store.record(key, source="webhook", status="APPROVED")
        assert recorded.released == 100
        await _wait_until(lambda: has(db_url, "state = 'accepted'", 100), within=10)
        released_in = time.monotonic() - started
    assert released_in < 2.0, released_in
    assert sends_of(api, "promo") == 100


async def test_a_132015_answer_pauses_the_template_in_the_registry(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.templates.set("promo", {"status": "PAUSED"})
    await insert(db_url, "cloud", "4915100000001", template("promo"), inbound_ago=None)
    async with running(settings_for(db_url, base_url)):
        await _wait_until(lambda: has(db_url, "held_template IS NOT NULL", 1))
        # Later rows of the template never reach the API.
        for n in range(2, 12):
            await insert(db_url, "cloud", f"49151000000{n:02}", template("promo"), inbound_ago=None)
        await _wait_until(lambda: has(db_url, "held_template IS NOT NULL", 11))
        assert sends_of(api, "promo") == 1
        [[status, source]] = await fetch(
            db_url, "SELECT status, source FROM outbox.templates WHERE name = 'promo'"
        )
        assert (status, source) == ("PAUSED", "send")
        [first] = await fetch(
            db_url, "SELECT error_code, attempts FROM outbox.messages ORDER BY id LIMIT 1"
        )
        assert (first["error_code"], first["attempts"]) == ("132015", 0)
        api.templates.set("promo", {"status": "APPROVED"})
        await TemplateStore(engine).resume("promo")
        await _wait_until(lambda: has(db_url, "state = 'accepted'", 11))


async def test_a_spam_limited_channel_keeps_sending_otps_while_marketing_waits(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    store = TemplateStore(engine)
    await store.record(
        TemplateKey("cloud", "otp", "en_US"), source="webhook", category="AUTHENTICATION"
    )
    await store.record(
        TemplateKey("cloud", "promo", "en_US"), source="webhook", category="MARKETING"
    )
    # "news" is not in the registry: unknown counts as marketing.
    api.faults.add(Fault("error_code", code=131048, templates=frozenset({"promo", "news"})))
    await insert(db_url, "cloud", "4915100000001", template("promo"), inbound_ago=None)
    async with running(settings_for(db_url, base_url)):
        await _wait_until(lambda: has(db_url, "error_code = '131048'", 1))
        [[until]] = await fetch(
            db_url,
            "SELECT marketing_hold_until - now() FROM outbox.channel_state WHERE channel = 'cloud'",
        )
        assert timedelta(hours=23) < until <= timedelta(hours=24)
        otps = [
            await insert(db_url, "cloud", f"49152{n:08}", template("otp"), inbound_ago=None)
            for n in range(5)
        ]
        marketing = [
            await insert(db_url, "cloud", f"49153{n:08}", template(name), inbound_ago=None)
            for n, name in enumerate(["promo", "news"] * 3)
        ]
        reply = await insert(
            db_url, "cloud", "4915400000001", {"type": "text", "text": {"body": "hi"}}
        )
        await _wait_until(lambda: has(db_url, "state = 'accepted'", 6))
        held_rows = f"error_code = 'marketing_held' AND id >= {min(marketing)}"
        await _wait_until(lambda: has(db_url, held_rows, len(marketing)))
    assert sends_of(api, "otp") == 5
    assert sends_of(api, "promo") + sends_of(api, "news") == 1  # only the first, before the hold
    held = await fetch(
        db_url,
        "SELECT state, attempts, next_attempt_at - now() AS wait FROM outbox.messages"
        " WHERE id = ANY($1::bigint[])",
        marketing,
    )
    assert {(r["state"], r["attempts"]) for r in held} == {("queued", 0)}
    assert all(timedelta(hours=23) < r["wait"] <= timedelta(hours=24) for r in held)
    assert await count(db_url, f"id = {reply} AND state = 'accepted'") == 1
    assert len(otps) == 5
