"""Who may post statuses: a channel checks Basic auth, takes anyone's bodies because its
configuration says so on purpose (`webhook_auth = "none"`), or refuses every body (401).

An unauthenticated body is stored as such, and its statuses find rows by wamid only: the outbox
id in biz_opaque_callback_data is sequential, so a forged `read` naming it must not resolve an
`unknown` row (the resend that would have delivered the message would never happen).
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import aiohttp
import orjson
import structlog

from outbox.config import Secret, Settings, WebhookAuth
from tests.support import fetch, row, running, settings_for, wait_until

RECIPIENT = "4915112345678"
AUTH = "Basic " + base64.b64encode(b"hook-user:hook-pass-0123456789").decode()


def _cloud(db_url: str, auth: WebhookAuth, *, credentials: bool = False) -> Settings:
    settings = settings_for(db_url, "http://127.0.0.1:9")
    user, password = (
        (Secret("hook-user"), Secret("hook-pass-0123456789")) if credentials else (None, None)
    )
    channels = tuple(
        dataclasses.replace(c, webhook_auth=auth, webhook_username=user, webhook_password=password)
        if c.id == "cloud"
        else c
        for c in settings.channels
    )
    return dataclasses.replace(settings, channels=channels)


def _forged_read(message_id: int) -> dict[str, Any]:
    status = {
        "id": "wamid.forged",
        "recipient_id": RECIPIENT,
        "status": "read",
        "timestamp": "1764000000",
        "biz_opaque_callback_data": f"outbox:{message_id}",
    }
    value = {"messaging_product": "whatsapp", "statuses": [status]}
    change = {"field": "messages", "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


async def _post(port: int | None, body: dict[str, Any], auth: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/cloud", data=orjson.dumps(body), headers=headers
        ) as response,
    ):
        await response.read()
        return response.status


async def _unknown_row(db_url: str) -> int:
    """A Cloud row whose send timed out: `unknown`, no wamid, waiting for evidence."""
    [[message_id]] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, state, sent_as, attempts)"
        ' VALUES (\'cloud\', $1, \'{"type": "text", "text": {"body": "hi"}}\','
        " 'unknown', 'freeform', 1) RETURNING id",
        RECIPIENT,
    )
    return int(message_id)


async def _settled(db_url: str) -> bool:
    [[pending]] = await fetch(
        db_url, "SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL"
    )
    return int(pending) == 0


async def _parked_retried(db_url: str) -> bool:
    """Every parked status was tried again at least once (or resolved: gone)."""
    rows = await fetch(db_url, "SELECT attempts FROM outbox.parked_statuses")
    return all(r["attempts"] >= 1 for r in rows)


async def test_a_forged_status_on_an_open_channel_does_not_resolve_an_unknown_row(
    db_url: str,
) -> None:
    message_id = await _unknown_row(db_url)
    settings = _cloud(db_url, WebhookAuth.NONE)
    async with running(settings, roles={"web", "reconciler"}) as started:
        assert await _post(started.http_port, _forged_read(message_id)) == 200
        await wait_until(lambda: _settled(db_url), within=10)
        # Retried from parking too (its origin comes along): still not by the outbox id.
        await wait_until(lambda: _parked_retried(db_url), within=10, interval=0.1)
    stored = await row(db_url, message_id)
    assert (stored["state"], stored["wamid"], stored["read_at"]) == ("unknown", None, None)
    [origin] = await fetch(db_url, "SELECT authenticated FROM outbox.webhook_events")
    assert origin["authenticated"] is False
    # It waits like any status naming no known row, and becomes an orphan at the horizon.
    [[parked]] = await fetch(db_url, "SELECT count(*) FROM outbox.parked_statuses")
    assert parked == 1


async def test_an_authenticated_status_still_resolves_an_unknown_row_by_its_outbox_id(
    db_url: str,
) -> None:
    message_id = await _unknown_row(db_url)
    settings = _cloud(db_url, WebhookAuth.BASIC, credentials=True)
    async with running(settings, roles={"web", "reconciler"}) as started:
        assert await _post(started.http_port, _forged_read(message_id), AUTH) == 200
        await wait_until(lambda: _settled(db_url), within=10)
    stored = await row(db_url, message_id)
    assert (stored["state"], stored["wamid"]) == ("read", "wamid.forged")
    [origin] = await fetch(db_url, "SELECT authenticated FROM outbox.webhook_events")
    assert origin["authenticated"] is True


async def test_a_channel_without_credentials_or_an_explicit_choice_refuses_webhooks(
    db_url: str,
) -> None:
    message_id = await _unknown_row(db_url)
    settings = _cloud(db_url, WebhookAuth.BASIC)
    with structlog.testing.capture_logs() as logs:
        async with running(settings, roles={"web"}) as started:
            assert await _post(started.http_port, _forged_read(message_id)) == 401
    assert await fetch(db_url, "SELECT id FROM outbox.webhook_events") == []
    refusing = [e for e in logs if e["event"] == "outbox.webhook.no_credentials"]
    assert [(e["log_level"], e["channel"]) for e in refusing] == [("error", "cloud")]
    rejected = [e for e in logs if e["event"] == "outbox.webhook.rejected"]
    assert [(e["reason"], e["status"]) for e in rejected] == [("unauthorised", 401)]


async def test_an_open_channel_is_a_logged_choice(db_url: str) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running(_cloud(db_url, WebhookAuth.NONE), roles={"web"}):
            pass
    warned = [e for e in logs if e["event"] == "outbox.webhook.unauthenticated"]
    # Both test channels take webhooks from anyone (tests.support): each is named.
    assert sorted((e["log_level"], e["channel"]) for e in warned) == [
        ("warning", "cloud"),
        ("warning", "onprem"),
    ]
