"""The BSUID and identity bodies of both shared fixture folders, through the real reconciler
and PostgreSQL: what each one leaves in `contacts`, `identity_pairs` and the rows (INDEX.md's
expected effects, read as "key on the BSUID")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from outbox.config import ReconcilerConfig
from outbox.db.engine import create_engine
from outbox.db.reconcile_store import ReconcileStore
from outbox.services.reconciler import Reconciler
from tests.paths import WEBHOOK_FIXTURES
from tests.support import drain, fetch, insert, row, settings_for

NEW = WEBHOOK_FIXTURES.parent / "webhooks-2026"
BSUID = "US.13491208655302741918"
ROTATED = "US.98765432100000000001"
needs_fixtures = pytest.mark.skipif(
    not NEW.is_dir(), reason="shared fixtures not beside the checkout"
)


@dataclass(frozen=True)
class Effect:
    contacts: dict[str, int]  # last inbound (Unix seconds) per key afterwards
    pairs: set[tuple[str, str, str]] = field(default_factory=set)  # (wa_id, bsuid, source)
    contacts_before: dict[str, int] = field(default_factory=dict)
    pairs_before: set[tuple[str, str]] = field(default_factory=set)
    # A row accepted beforehand (wamid, recipient), and the state it must reach.
    row: tuple[str, str] | None = None
    state: str | None = None


EFFECTS = {
    "webhooks/cloud__inbound__bsuid-only-no-wa-id.json": Effect({"US.1234": 1454119029}),
    "webhooks-2026/cloud__inbound__bsuid-in-from-and-wa-id.json": Effect({"US.1234": 1454119029}),
    "webhooks-2026/cloud__inbound__username-only-parent-bsuid-no-phone.json": Effect(
        {BSUID: 1504902988}
    ),
    "webhooks-2026/cloud__inbound__from-plus-from-user-id-username.json": Effect(
        {"5678": 1454119029}, {("5678", "US.1234", "contacts")}
    ),
    "webhooks/cloud__status__sent-pmp-marketing-bsuid.json": Effect(
        {},
        {("16315551181", BSUID, "contacts")},
        row=("ABGGFlA5Fpa", "16315551181"),
        state="sent",
    ),
    "webhooks/cloud__status__read-no-pricing-bsuid.json": Effect(
        {},
        {("16315551181", BSUID, "contacts")},
        row=("ABGGFlA5Fpa", "16315551181"),
        state="read",
    ),
    # No recipient_id: the row is found by its id, and the BSUID is paired with its number.
    "webhooks-2026/cloud__status__sent-pmp-to-bsuid-no-recipient-id.json": Effect(
        {}, {("16315551181", BSUID, "status")}, row=("ABGGFlA5Fpa", "16315551181"), state="sent"
    ),
    "webhooks-2026/cloud__status__sent-recipient-user-id-only-cbp.json": Effect(
        {}, {("4915112345678", BSUID, "status")}, row=("external_id", "4915112345678"), state="sent"
    ),
    # The rotated id keeps the old one's window and number; the old pair stays for rows to it.
    "webhooks-2026/cloud__user-id-update__bsuid-rotated.json": Effect(
        {BSUID: 1454000000, ROTATED: 1454000000},
        {("5678", BSUID, "test"), ("5678", ROTATED, "user_id_changed")},
        contacts_before={BSUID: 1454000000},
        pairs_before={("5678", BSUID)},
    ),
    "webhooks-2026/cloud__system__user-changed-number-meta-example.json": Effect(
        {"16505551234": 1750000000, "12195555358": 1750000000},
        contacts_before={"16505551234": 1750000000},
    ),
    "webhooks-2026/cloud__system__user-changed-number-no-contacts.json": Effect(
        {"972000000002": 1753000000, "972000000003": 1753000000},
        contacts_before={"972000000002": 1753000000},
    ),
}


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EFFECTS))
async def test_identity_fixture(db_url: str, name: str) -> None:
    effect = EFFECTS[name]
    for key, at in effect.contacts_before.items():
        await fetch(
            db_url,
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
            "VALUES ('cloud', $1, to_timestamp($2))",
            key,
            at,
        )
    for wa_id, bsuid in effect.pairs_before:
        await fetch(
            db_url,
            "INSERT INTO outbox.identity_pairs (channel, wa_id, bsuid, source) "
            "VALUES ('cloud', $1, $2, 'test')",
            wa_id,
            bsuid,
        )
    message_id = None
    if effect.row is not None:
        wamid, recipient = effect.row
        message_id = await insert(
            db_url, "cloud", recipient, {"type": "text", "text": {"body": "x"}}, inbound_ago=None
        )
        await fetch(
            db_url,
            "UPDATE outbox.messages SET state = 'accepted', wamid = $2, accepted_at = now() "
            "WHERE id = $1",
            message_id,
            wamid,
        )
        await fetch(db_url, "DELETE FROM outbox.contacts")
    body = (WEBHOOK_FIXTURES.parent / name).read_text()
    await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload) VALUES ('cloud', $1::jsonb)",
        body,
    )
    engine = create_engine(db_url, pool_size=1)
    try:
        await Reconciler(ReconcileStore(engine), ReconcilerConfig()).process_webhooks(10)
    finally:
        await engine.dispose()
    contacts = await fetch(
        db_url,
        "SELECT wa_id, extract(epoch FROM last_inbound_at)::bigint AS at FROM outbox.contacts",
    )
    assert {c["wa_id"]: c["at"] for c in contacts} == effect.contacts
    pairs = await fetch(db_url, "SELECT wa_id, bsuid, source FROM outbox.identity_pairs")
    learned = {(p["wa_id"], p["bsuid"], p["source"]) for p in pairs}
    # A body that names the pair twice (status and contacts) keeps the last word.
    assert learned == effect.pairs
    if message_id is not None:
        assert (await row(db_url, message_id))["state"] == effect.state


@pytest.fixture
async def fixture_answer() -> AsyncIterator[str]:
    """An API that answers every send with the courier mock's 201: `contacts[0]` has a
    `user_id` and no `wa_id`."""
    body = (WEBHOOK_FIXTURES / "cloud__send-response__201-contact-bsuid.json").read_bytes()

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=body, status=201, content_type="application/json")

    app = web.Application()
    app.router.add_post("/messages", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@needs_fixtures
async def test_a_send_answer_with_only_user_id_pairs_it_with_the_rows_number(
    db_url: str, fixture_answer: str
) -> None:
    template = {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}
    message_id = await insert(db_url, "cloud", "+250 000 000 001", template, inbound_ago=None)
    await drain(settings_for(db_url, fixture_answer))
    done = await row(db_url, message_id)
    assert (done["state"], done["wamid"]) == ("accepted", "157b5e14568e8")
    pairs = await fetch(db_url, "SELECT wa_id, bsuid, source FROM outbox.identity_pairs")
    assert [tuple(p) for p in pairs] == [("250000000001", "US.1234", "send_answer")]
