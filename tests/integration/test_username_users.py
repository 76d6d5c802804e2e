"""Username users (issue 18 §1): BSUID recipients, phone-BSUID pairs, windows and order across
both spellings, and a username-only user end to end in the sandbox."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

from outbox.config import ReconcilerConfig, Settings
from outbox.db.engine import create_engine
from outbox.db.reconcile_store import ReconcileStore
from outbox.http.api_client import ApiClient, create_session
from outbox.sandbox import Sandbox
from outbox.services.reconciler import Reconciler
from tests.support import KEYS, drain, fetch, insert, row, running, settings_for, wait_until

BSUID_A = "US.13491208655302741918"
TEXT = {"type": "text", "text": {"body": "hi"}}
TEMPLATE = {"type": "template", "template": {"name": "otp", "language": {"code": "en"}}}


async def _webhook(db_url: str, channel: str, body: dict[str, Any]) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload) VALUES ($1, $2::jsonb)",
        channel,
        json.dumps(body),
    )


async def _reconcile(db_url: str) -> None:
    """Every stored webhook through the reconciler's own batch code."""
    engine = create_engine(db_url, pool_size=1)
    try:
        reconciler = Reconciler(ReconcileStore(engine), ReconcilerConfig())
        await reconciler.process_webhooks(100)
    finally:
        await engine.dispose()


def _cloud(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [{"field": field, "value": {"messaging_product": "whatsapp", **value}}],
            }
        ],
    }


def _inbound(at: int, *, phone: str | None = None, bsuid: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": f"wamid.in{at}{phone}{bsuid}",
        "timestamp": str(at),
        "type": "text",
        "text": {"body": "hello"},
    }
    if phone is not None:
        message["from"] = phone
    if bsuid is not None:
        message["from_user_id"] = bsuid
    return _cloud({"messages": [message]})


async def _pairs(db_url: str) -> set[tuple[str, str, str, str]]:
    rows = await fetch(db_url, "SELECT channel, wa_id, bsuid, source FROM outbox.identity_pairs")
    return {(r["channel"], r["wa_id"], r["bsuid"], r["source"]) for r in rows}


async def _last_inbound(db_url: str) -> dict[str, int]:
    rows = await fetch(
        db_url,
        "SELECT wa_id, extract(epoch FROM last_inbound_at)::bigint AS at FROM outbox.contacts",
    )
    return {r["wa_id"]: r["at"] for r in rows}


async def test_a_bsuid_only_inbound_opens_the_window_of_its_bsuid(db_url: str) -> None:
    await _webhook(db_url, "cloud", _inbound(1_700_000_000, bsuid=BSUID_A))
    await _reconcile(db_url)
    assert await _last_inbound(db_url) == {BSUID_A: 1_700_000_000}
    notes = await fetch(db_url, "SELECT error FROM outbox.webhook_events")
    assert [n["error"] for n in notes] == [None]


async def test_pairs_are_learned_from_inbound_statuses_and_contacts(db_url: str) -> None:
    await _webhook(db_url, "cloud", _inbound(1_700_000_000, phone="4915112345678", bsuid=BSUID_A))
    status = {
        "id": "wamid.x",
        "status": "sent",
        "timestamp": "1700000001",
        "recipient_id": "4915100000001",
        "recipient_user_id": "DE.B1",
    }
    contact = {"wa_id": "4915100000002", "user_id": "DE.C2", "profile": {"name": "c"}}
    await _webhook(db_url, "cloud", _cloud({"statuses": [status], "contacts": [contact]}))
    await _reconcile(db_url)
    assert await _pairs(db_url) == {
        ("cloud", "4915112345678", BSUID_A, "inbound"),
        ("cloud", "4915100000001", "DE.B1", "status"),
        ("cloud", "4915100000002", "DE.C2", "contacts"),
    }


async def test_the_window_a_bsuid_opened_applies_to_rows_written_to_the_phone_once_paired(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    phone = "4915112345678"
    # The user writes as a username user: no phone number in the body.
    await _webhook(db_url, "cloud", _inbound(_now(), bsuid=BSUID_A))
    await _reconcile(db_url)
    before = await insert(db_url, "cloud", phone, TEXT, inbound_ago=None)
    await drain(settings_for(db_url, base_url))
    assert (await row(db_url, before))["error_code"] == "window_closed"
    # Later a status names both: the pair is learned, and the BSUID's window is the phone's.
    status = {
        "id": "wamid.other",
        "status": "read",
        "timestamp": str(_now()),
        "recipient_id": phone,
        "recipient_user_id": BSUID_A,
    }
    await _webhook(db_url, "cloud", _cloud({"statuses": [status]}))
    await _reconcile(db_url)
    after = await insert(db_url, "cloud", phone, TEXT, inbound_ago=None)
    await drain(settings_for(db_url, base_url))
    assert (await row(db_url, after))["state"] == "accepted"
    assert [r.body.get("to") for r in api.message_requests()] == [phone]


async def test_the_window_a_phone_opened_applies_to_rows_written_to_the_bsuid(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    phone = "4915112345678"
    await _webhook(db_url, "cloud", _inbound(_now(), phone=phone))
    await _reconcile(db_url)
    early = await insert(db_url, "cloud", BSUID_A, TEXT, inbound_ago=None)
    # The pair comes after the row was written: its key stays the BSUID, the window is found.
    contact = {"wa_id": phone, "user_id": BSUID_A}
    await _webhook(db_url, "cloud", _cloud({"contacts": [contact], "statuses": []}))
    await _reconcile(db_url)
    late = await insert(db_url, "cloud", BSUID_A, TEXT, inbound_ago=None)
    keys = await fetch(
        db_url, "SELECT id, wa_id FROM outbox.messages WHERE id = ANY($1)", [early, late]
    )
    assert {r["id"]: r["wa_id"] for r in keys} == {early: BSUID_A, late: phone}
    await drain(settings_for(db_url, base_url))
    assert [(await row(db_url, i))["state"] for i in (early, late)] == ["accepted", "accepted"]
    sent = [r.body for r in api.message_requests()]
    assert [(b.get("to"), b.get("recipient")) for b in sent] == [(None, BSUID_A)] * 2


async def test_order_per_recipient_holds_across_both_spellings_once_paired(db_url: str) -> None:
    phone = "4915112345678"
    await fetch(
        db_url,
        "INSERT INTO outbox.identity_pairs (channel, bsuid, wa_id, source) "
        "VALUES ('cloud', $1, $2, 'test')",
        BSUID_A,
        phone,
    )
    first = await insert(db_url, "cloud", "+49 151 12345678", TEXT, inbound_ago=None)
    second = await insert(db_url, "cloud", BSUID_A, TEXT, inbound_ago=None)
    heads = await fetch(
        db_url, "SELECT id, head, wa_id FROM outbox.messages WHERE id = ANY($1)", [first, second]
    )
    assert {r["id"]: (r["head"], r["wa_id"]) for r in heads} == {
        first: (True, phone),
        second: (False, phone),
    }


async def test_a_rotated_bsuid_keeps_its_window_and_phone(db_url: str) -> None:
    new = "US.98765432100000000001"
    await _webhook(db_url, "cloud", _inbound(1_700_000_000, bsuid=BSUID_A))
    await _reconcile(db_url)
    await fetch(
        db_url,
        "INSERT INTO outbox.identity_pairs (channel, bsuid, wa_id, source) "
        "VALUES ('cloud', $1, '4915112345678', 'test')",
        BSUID_A,
    )
    system = {
        "from_user_id": BSUID_A,
        "id": "wamid.sys",
        "timestamp": "1700000100",
        "type": "system",
        "system": {"type": "user_changed_user_id", "new_user_id": new, "body": "changed"},
    }
    await _webhook(db_url, "cloud", _cloud({"messages": [system]}))
    await _reconcile(db_url)
    assert await _last_inbound(db_url) == {BSUID_A: 1_700_000_000, new: 1_700_000_000}
    assert ("cloud", "4915112345678", new, "user_id_changed") in await _pairs(db_url)


async def test_an_onprem_channel_fails_a_bsuid_row_with_no_request(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    message_id = await insert(db_url, "onprem", BSUID_A, TEMPLATE, inbound_ago=None)
    await drain(settings_for(db_url, base_url))
    done = await row(db_url, message_id)
    assert (done["state"], done["error_code"]) == ("failed", "invalid_recipient")
    assert "only Cloud channels" in done["error_detail"]
    assert api.message_requests() == []


async def test_a_send_answer_naming_the_bsuid_teaches_the_pair(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    phone = "4915112345678"
    api.users.add(BSUID_A, phone)
    await insert(db_url, "cloud", phone, TEMPLATE, inbound_ago=None)
    await drain(settings_for(db_url, base_url))
    assert await _pairs(db_url) == {("cloud", phone, BSUID_A, "send_answer")}


def _now() -> int:
    return int(time.time())


def _fast(settings: Settings) -> Settings:
    reconciler = replace(settings.reconciler, poll_interval=timedelta(milliseconds=100))
    return replace(settings, reconciler=reconciler)


async def test_a_username_only_user_writes_and_gets_a_free_form_reply_that_is_read(
    db_url: str,
) -> None:
    """Must show (issue 18): a username-only user writes, the window opens, a free-form reply
    to their BSUID goes out with `recipient`, its statuses land and the row ends `read`."""
    api = Sandbox(KEYS)
    base_url = await api.start()
    try:
        settings = _fast(settings_for(db_url, base_url))
        api.users.add(BSUID_A)  # no phone number known anywhere
        async with running(settings, roles={"sender", "reconciler", "web"}) as started:
            async with create_session(2, timedelta(seconds=10)) as session:
                client = ApiClient(session)
                cloud = next(c for c in settings.channels if c.id == "cloud")
                url = f"http://127.0.0.1:{started.http_port}/webhooks/cloud"
                assert (await client.set_webhook(cloud, url)).status == 200
            api.user_writes("cloud-key", BSUID_A, "hello, I have no number here")
            await wait_until(lambda: _has_window(db_url))
            reply = await insert(db_url, "cloud", BSUID_A, TEXT, inbound_ago=None)
            await wait_until(lambda: _state_is(db_url, reply, "read"))
        await api.wait_idle()
    finally:
        await api.stop()
    sent = [r.body for r in api.message_requests()]
    assert [(b.get("to"), b.get("recipient")) for b in sent] == [(None, BSUID_A)]
    history = await fetch(
        db_url,
        "SELECT status FROM outbox.status_history WHERE message_id = $1 ORDER BY at",
        reply,
    )
    assert sorted(h["status"] for h in history) == ["delivered", "read", "sent"]


async def _has_window(db_url: str) -> bool:
    return BSUID_A in await _last_inbound(db_url)


async def _state_is(db_url: str, message_id: int, state: str) -> bool:
    return str((await row(db_url, message_id))["state"]) == state
