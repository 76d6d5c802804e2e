"""The template registry, marketing preferences and the marketing hold against PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.channel_state import ChannelStateStore
from outbox.db.preferences import PreferenceStore
from outbox.db.templates import TemplateStore
from outbox.domain import preferences
from outbox.domain.preferences import Preference
from outbox.domain.templates import TemplateKey

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
KEY = TemplateKey("102290129340398", "promo", "en_US")


async def test_status_moves_forward_in_time_and_fields_are_kept(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    first = await store.record(KEY, source="webhook", at=T0, status="paused", category="marketing")
    assert first.info.held
    assert first.info.category == "MARKETING"
    assert first.previous_status is None
    # An older event changes no status; a quality-only event keeps status and category.
    older = await store.record(KEY, source="webhook", at=T0 - timedelta(1), status="APPROVED")
    assert older.info.status == "PAUSED"
    quality = await store.record(KEY, source="webhook", at=T0, quality="yellow")
    assert (quality.info.status, quality.info.category, quality.info.quality) == (
        "PAUSED",
        "MARKETING",
        "YELLOW",
    )
    found = await store.lookup(KEY.waba_id, [("promo", "en_US"), ("other", "en_US")])
    assert list(found) == [("promo", "en_US")]
    assert found["promo", "en_US"].held
    assert await store.lookup("another-waba", [("promo", "en_US")]) == {}


async def test_active_again_releases_held_rows_and_wakes_senders(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    paused = await store.record(KEY, source="send", status="PAUSED")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO outbox.messages (channel, recipient, payload, held_template,"
                " next_attempt_at) SELECT 'c', '49151' || g, '{}', :id, now() + interval '1 h'"
                " FROM generate_series(1, 3) g"
            ),
            {"id": paused.info.id},
        )
    [resumed] = await store.resume("promo")
    assert resumed.released == 3
    assert resumed.info.status == "APPROVED"
    async with engine.connect() as connection:
        left = await connection.execute(
            text(
                "SELECT count(*) FROM outbox.messages WHERE held_template IS NOT NULL"
                " OR next_attempt_at IS NOT NULL"
            )
        )
        assert left.scalar_one() == 0
    [health] = await store.health()
    assert (health.status, health.held_rows) == ("APPROVED", 0)
    assert await store.resume("promo", language="de") == []


async def test_newest_preference_wins_and_evidence_is_capped(engine: AsyncEngine) -> None:
    store = PreferenceStore(engine)
    stop = preferences.opt_out_from_failure("c", "491510", T0, {"title": "x" * 10_000})
    assert await store.record(stop)
    resume_earlier = Preference(
        "c", "491510", preferences.MARKETING_MESSAGES, False, T0 - timedelta(1), "user_preferences"
    )
    assert not await store.record(resume_earlier)
    [stored] = await store.of("c", ["491510", "US.1"])
    assert stored.opted_out
    assert stored.source == "131050"
    assert stored.evidence["truncated"] is True
    assert await store.opt_out_counts() == {("c", "marketing_messages"): 1}


async def test_marketing_hold_is_shared_and_only_grows(engine: AsyncEngine) -> None:
    states = ChannelStateStore(engine)
    assert await states.marketing_hold("c") is None
    until = await states.hold_marketing("c", 3600)
    assert await states.hold_marketing("c", 10) == until
    assert await states.marketing_hold("c") == until
