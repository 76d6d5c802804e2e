"""The claim records what the row is sent as, so a row rescued after a crash remembers it.

A free-form row with a fallback_template, claimed while its window is open, is sent free-form.
If the process dies before writing the answer, the lease runs out and the row goes `unknown`;
a later `failed 131047` status for it (a closed window) must then send the fallback template,
not fail with "the fallback_template failed too".
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.models import SentAs
from outbox.domain.ratelimit import Limits
from tests.support import fetch, insert, row, running, settings_for, wait_until

RECIPIENT = "4915100000001"
FALLBACK = json.dumps({"type": "template", "template": {"name": "x", "language": {"code": "en"}}})
LIMITS = Limits(rate=1000, burst=1000)


def _failed_131047(message_id: int) -> str:
    status = {
        "id": "wamid.lost-answer",
        "recipient_id": RECIPIENT,
        "status": "failed",
        "timestamp": "1765000000",
        "biz_opaque_callback_data": f"outbox:{message_id}",
        "errors": [{"code": 131047, "title": "Re-engagement message"}],
    }
    value = {"messaging_product": "whatsapp", "statuses": [status]}
    change = {"field": "messages", "value": value}
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [change]}]})


async def test_a_rescued_free_form_row_refused_for_its_window_sends_its_fallback(
    db_url: str, engine: AsyncEngine
) -> None:
    message_id = await insert(
        db_url,
        "cloud",
        RECIPIENT,
        {"type": "text", "text": {"body": "hi"}},
        fallback_template=FALLBACK,
    )
    [claimed] = (
        await MessageStore(engine).claim("cloud", 10, "crashed", timedelta(0), LIMITS)
    ).messages
    assert claimed.id == message_id
    # The process died with the request on the wire: the lease runs out.
    [rescued] = await HousekeepingStore(engine).rescue_expired_leases()
    assert (rescued.id, rescued.state) == (message_id, "unknown")
    await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload) VALUES ('cloud', $1::jsonb)",
        _failed_131047(message_id),
    )
    async with running(settings_for(db_url, "http://127.0.0.1:9"), roles={"reconciler"}):
        await wait_until(lambda: _processed(db_url))
    done = await row(db_url, message_id)
    assert (done["state"], done["sent_as"], done["error_code"]) == (
        "queued",
        "fallback_template",
        "window_closed",
    )


async def _processed(db_url: str) -> bool:
    return not await fetch(db_url, "SELECT 1 FROM outbox.webhook_events WHERE processed_at IS NULL")


async def test_only_a_row_the_window_decides_is_planned_in_the_claim(
    db_url: str, engine: AsyncEngine
) -> None:
    """Issue 16: a row without a fallback can only go as its payload, so the claim does not
    write its `sent_as` (a second row version per send); the answer does. Before: every
    claimed row was updated twice in the claim."""
    text = {"type": "text", "text": {"body": "hi"}}  # each recipient wrote a minute ago
    template = json.loads(FALLBACK)
    plain = await insert(db_url, "cloud", "4915100000002", template)
    free_form = await insert(db_url, "cloud", "4915100000003", text)
    decided = await insert(db_url, "cloud", RECIPIENT, text, fallback_template=FALLBACK)
    claim = await MessageStore(engine).claim("cloud", 10, "w", timedelta(seconds=30), LIMITS)
    assert {m.id: m.planned for m in claim.messages} == {
        plain: SentAs.TEMPLATE, free_form: SentAs.FREEFORM, decided: SentAs.FREEFORM
    }  # fmt: skip
    found = await fetch(db_url, "SELECT id, sent_as FROM outbox.messages")
    assert {r["id"]: r["sent_as"] for r in found} == {
        plain: None, free_form: None, decided: "freeform"
    }  # fmt: skip
