"""Every template, quality, account, capability and preference body of the 2026 corpus, posted
signed to POST /webhooks and reconciled, with the effect its INDEX.md entry names."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from outbox.config import Secret
from tests.paths import WEBHOOK_FIXTURES_2026
from tests.support import fetch, insert, running, settings_for, wait_until

SECRET = "platform-secret"
NUMBER_ID = "106540352242922"
META_WABA = "102290129340398"
KINDS = (
    "template-status",
    "template-quality",
    "template-category",
    "phone-quality",
    "account-update",
    "account-alerts",
    "business-capability",
    "user-preferences",
)


def _indexed() -> list[str]:
    """The INDEX.md rows of this slice's kinds: a new body there fails until it has a check."""
    index = WEBHOOK_FIXTURES_2026 / "INDEX.md"
    if not index.is_file():
        return []
    names = re.findall(r"^\| `(cloud__([a-z-]+)__[^`]+\.json)` \|", index.read_text(), re.M)
    return sorted(name for name, kind in names if kind in KINDS)


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def _one(db_url: str, sql: str, *args: Any) -> asyncpg.Record | None:
    rows = await fetch(db_url, sql, *args)
    return rows[0] if rows else None


async def _template(db_url: str, name: str) -> asyncpg.Record | None:
    return await _one(db_url, "SELECT * FROM outbox.templates WHERE name = $1", name)


async def _health(db_url: str) -> asyncpg.Record | None:
    return await _one(db_url, "SELECT * FROM outbox.account_health WHERE channel = 'cloud'")


async def _events(db_url: str) -> list[tuple[str, str, str]]:
    rows = await fetch(db_url, "SELECT kind, event, effect, detail FROM outbox.account_events")
    return [(r["kind"], r["event"], r["effect"]) for r in rows]


async def _paused_until(db_url: str) -> datetime | None:
    row = await _one(db_url, "SELECT paused_until FROM outbox.channel_state WHERE channel='cloud'")
    return None if row is None else row["paused_until"]


Check = Callable[[str], Awaitable[None]]
Prepare = Callable[[str], Awaitable[Any]]


async def _nothing(db_url: str) -> None:
    return None


# file -> (the channel's configured waba_id, what to set up first, what must hold afterwards)
EFFECTS: dict[str, tuple[str, Prepare, Check]] = {}


def effect(
    name: str, waba: str = META_WABA, prepare: Prepare = _nothing
) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        EFFECTS[name] = (waba, prepare, check)
        return check

    return register


async def _held_row(db_url: str) -> None:
    """order_confirmation (en_US) paused, one row held for it."""
    await fetch(
        db_url,
        "INSERT INTO outbox.templates (waba_id, name, language, status, source)"
        " VALUES ($1, 'order_confirmation', 'en_US', 'PAUSED', 'webhook')",
        META_WABA,
    )
    await insert(
        db_url,
        "cloud",
        "4915100000001",
        {
            "type": "template",
            "template": {"name": "order_confirmation", "language": {"code": "en_US"}},
        },
        held_template=(await _template(db_url, "order_confirmation"))["id"],  # type: ignore[index]
        next_attempt_at=datetime(2100, 1, 1, tzinfo=UTC),
    )


@effect("cloud__template-status__approved-utility-meta-example.json", prepare=_held_row)
async def _approved(db_url: str) -> None:
    t = await _template(db_url, "order_confirmation")
    assert t is not None
    assert (t["waba_id"], t["language"], t["status"], t["category"]) == (
        META_WABA,
        "en_US",
        "APPROVED",
        "UTILITY",
    )
    assert t["reason"] is None  # "NONE" is not a rejection
    assert t["status_at"] == _at(1751247548)
    held = await fetch(db_url, "SELECT held_template, next_attempt_at FROM outbox.messages")
    assert [(r["held_template"], r["next_attempt_at"]) for r in held] == [(None, None)]


@effect("cloud__template-status__approved-reason-null-id-0.json")
async def _approved_waba_zero(db_url: str) -> None:
    # WABA "0" is no configured channel's: acknowledged and kept unrouted, no template changed
    assert await _template(db_url, "my_message_template") is None
    rows = await fetch(db_url, "SELECT channel, error FROM outbox.webhook_events")
    assert [r["channel"] for r in rows] == ["(unrouted)"]


@effect("cloud__template-status__rejected-invalid-format-rejection-info.json")
async def _rejected(db_url: str) -> None:
    t = await _template(db_url, "abandoned_cart")
    assert t is not None
    assert (t["language"], t["status"], t["category"]) == ("en", "REJECTED", "MARKETING")
    assert t["reason"].startswith("INVALID_FORMAT; Your template has parameters placed")
    assert "Separate parameters with descriptive text" in t["reason"]


@effect("cloud__template-status__rejected-scam-capture.json", waba="880480871844883")
async def _rejected_scam(db_url: str) -> None:
    t = await _template(db_url, "schedule_confirmation4")
    assert t is not None
    assert (t["waba_id"], t["language"], t["status"], t["category"], t["reason"]) == (
        "880480871844883",
        "pt_BR",
        "REJECTED",
        None,
        "SCAM",
    )


async def _quality_only(db_url: str) -> None:
    t = await _template(db_url, "welcome_template")
    assert t is not None
    assert (t["language"], t["quality"], t["status"]) == ("en_US", "YELLOW", None)


effect("cloud__template-quality__green-to-yellow.json")(_quality_only)
effect("cloud__template-quality__meta-example-under-status-field.json")(_quality_only)


@effect("cloud__template-category__impending-utility-to-marketing.json")
async def _impending(db_url: str) -> None:
    t = await _template(db_url, "welcome_template")
    assert t is not None
    assert (t["category"], t["status"]) == ("UTILITY", None)


@effect("cloud__template-category__completed-utility-to-marketing.json")
async def _completed(db_url: str) -> None:
    t = await _template(db_url, "welcome_template")
    assert t is not None
    assert t["category"] == "MARKETING"


@effect("cloud__template-category__new-category-only.json", waba="57438975935")
async def _new_only(db_url: str) -> None:
    t = await _template(db_url, "my_message_template")
    assert t is not None
    assert (t["language"], t["category"]) == ("he", "MARKETING")


@effect("cloud__phone-quality__throughput-upgrade-unlimited.json")
async def _throughput(db_url: str) -> None:
    h = await _health(db_url)
    assert h is not None
    assert (h["display_phone_number"], h["quality_event"], h["current_limit"]) == (
        "15550783881",
        "THROUGHPUT_UPGRADE",
        "TIER_UNLIMITED",
    )
    assert (h["old_limit"], h["max_daily_conversations"]) == (None, None)
    assert h["throughput_upgraded_at"] == _at(1748454394)
    assert await _paused_until(db_url) is None


@effect("cloud__phone-quality__flagged-tier-10k.json", waba="waba-id")
async def _flagged(db_url: str) -> None:
    h = await _health(db_url)
    assert h is not None
    assert (h["waba_id"], h["quality_event"], h["current_limit"]) == (
        "waba-id",
        "FLAGGED",
        "TIER_10K",
    )
    assert h["throughput_upgraded_at"] is None
    assert await _paused_until(db_url) is None


@effect("cloud__account-update__restriction-biz-initiated-and-add-phone.json")
async def _restriction(db_url: str) -> None:
    # held until the expiration, 1641330498: long past, so no pause is left to hold
    rows = await fetch(db_url, "SELECT event, effect, detail FROM outbox.account_events")
    assert [(r["event"], r["effect"]) for r in rows] == [("ACCOUNT_RESTRICTION", "expired")]
    assert "RESTRICTED_BIZ_INITIATED_MESSAGING" in rows[0]["detail"]
    assert "RESTRICTED_ADD_PHONE_NUMBER_ACTION" in rows[0]["detail"]
    assert await _paused_until(db_url) is None


@effect("cloud__account-update__violation-adult.json")
async def _violation(db_url: str) -> None:
    assert await _events(db_url) == [("account", "ACCOUNT_VIOLATION", "recorded")]
    assert await _paused_until(db_url) is None


async def _banned(db_url: str) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel, paused_until, pause_reason, paused_by)"
        " VALUES ('cloud', now() + interval '3650 days', 'banned', 'account_update')",
    )


@effect("cloud__account-update__disabled-update-reinstate.json", prepare=_banned)
async def _reinstate(db_url: str) -> None:
    assert await _events(db_url) == [("account", "DISABLED_UPDATE", "lift")]
    assert await _paused_until(db_url) is None


@effect(
    "cloud__account-update__disabled-update-schedule-for-disable.json",
    waba="whatsapp-business-account-id",
)
async def _scheduled_disable(db_url: str) -> None:
    rows = await fetch(db_url, "SELECT effect, detail FROM outbox.account_events")
    assert [(r["effect"], r["detail"]) for r in rows] == [
        ("recorded", "ban state SCHEDULE_FOR_DISABLE January 31, 2021")
    ]
    assert await _paused_until(db_url) is None  # sending continues until then


@effect("cloud__account-update__volume-tier-update-utility.json")
async def _volume_tier(db_url: str) -> None:
    assert await _events(db_url) == [("account", "VOLUME_BASED_PRICING_TIER_UPDATE", "recorded")]
    assert await _paused_until(db_url) is None
    assert await _health(db_url) is None


@effect("cloud__account-alerts__increased-capabilities-deferred.json")
async def _alert(db_url: str) -> None:
    rows = await fetch(db_url, "SELECT event, effect, detail FROM outbox.account_events")
    assert [(r["event"], r["effect"]) for r in rows] == [
        ("INCREASED_CAPABILITIES_ELIGIBILITY_DEFERRED", "recorded")
    ]
    assert rows[0]["detail"].startswith("WARNING Limits cannot be increased")
    assert await _paused_until(db_url) is None


@effect("cloud__business-capability__max-daily-2000-numeric.json", waba="524126980791429")
async def _capability(db_url: str) -> None:
    h = await _health(db_url)
    assert h is not None
    assert (h["waba_id"], h["max_daily_conversations"], h["max_phone_numbers"]) == (
        "524126980791429",
        "2000",
        25,
    )


async def _opted_out(db_url: str) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.marketing_preferences (channel, identity, category, opted_out, at,"
        " source) VALUES ('cloud', '16505551234', 'marketing_messages', true,"
        " to_timestamp(1731700000), '131050')",
    )


@effect("cloud__user-preferences__resume-meta-example.json", prepare=_opted_out)
async def _resume(db_url: str) -> None:
    rows = await fetch(db_url, "SELECT * FROM outbox.marketing_preferences")
    assert [(r["identity"], r["opted_out"], r["source"], r["at"]) for r in rows] == [
        ("16505551234", False, "user_preferences", _at(1731705721))
    ]
    assert await fetch(db_url, "SELECT * FROM outbox.contacts") == []  # not an inbound message


@effect("cloud__user-preferences__signup-value-with-bsuid-contact.json")
async def _signup(db_url: str) -> None:
    assert await fetch(db_url, "SELECT * FROM outbox.marketing_preferences") == []
    assert await _events(db_url) == [("preference", "SIGNUP", "recorded")]
    assert await fetch(db_url, "SELECT * FROM outbox.contacts") == []


def test_every_indexed_body_of_these_kinds_has_a_check() -> None:
    if not _indexed():
        pytest.skip("shared fixtures not beside the checkout")
    assert sorted(EFFECTS) == _indexed()


@pytest.mark.parametrize("name", _indexed())
async def test_fixture_effect(db_url: str, name: str) -> None:
    waba, prepare, check = EFFECTS[name]
    settings = settings_for(db_url, "http://127.0.0.1:9")
    onprem, cloud = settings.channels
    cloud = dataclasses.replace(cloud, phone_number_id=NUMBER_ID, waba_id=waba)
    settings = dataclasses.replace(
        settings, channels=(onprem, cloud), partner_webhook_secret=Secret(SECRET)
    )
    await prepare(db_url)
    raw = (WEBHOOK_FIXTURES_2026 / name).read_bytes()
    signed = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    async with running(settings, roles={"web", "reconciler"}) as started:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{started.http_port}/webhooks",
                data=io.BytesIO(raw),
                headers={"x-360dialog-signature": signed, "Content-Type": "application/json"},
            ) as response,
        ):
            assert response.status == 200

        async def processed() -> bool:
            rows = await fetch(db_url, "SELECT processed_at FROM outbox.webhook_events")
            return bool(rows) and all(r["processed_at"] is not None for r in rows)

        await wait_until(processed, within=10)
    await check(db_url)
