"""WABA-level webhook fields read (account_events) and planned (account_plan), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.domain.account_events import (
    AccountChange,
    Capability,
    NumberQuality,
    PreferenceChange,
    TemplateUpdate,
    Unreadable,
    parse_change,
)
from outbox.domain.account_plan import UNTIL_LIFTED, AccountSeen, plan_account
from outbox.domain.notifications import Ignored, parse_notification
from outbox.domain.templates import TemplateKey

T0 = datetime(2026, 12, 6, tzinfo=UTC)
ENTRY = {"id": "111", "time": int(T0.timestamp())}


def _t(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "message_template_status_update",
            {
                "event": "PAUSED",
                "message_template_name": "promo",
                "message_template_language": "en-US",
                "message_template_id": 7,
                "reason": None,
                "other_info": {"title": "FIRST_PAUSE", "description": "low quality"},
            },
            TemplateUpdate(
                "111", T0, "promo", "en_US", "7", status="PAUSED", reason="FIRST_PAUSE; low quality"
            ),
        ),
        (
            "message_template_status_update",
            {
                "event": "disabled",
                "message_template_name": "promo",
                "message_template_language": "en",
                "disable_info": {"disable_date": "x"},
            },
            TemplateUpdate("111", T0, "promo", "en", None, status="DISABLED"),
        ),
        (
            # a quality update filed under the status field: no status inferred
            "message_template_status_update",
            {
                "new_quality_score": "RED",
                "message_template_name": "promo",
                "message_template_language": "en",
            },
            TemplateUpdate("111", T0, "promo", "en", None, quality="RED"),
        ),
        (
            "message_template_status_update",
            {"message_template_name": "promo", "message_template_language": "en"},
            Unreadable("template status update without event"),
        ),
        (
            "message_template_status_update",
            {"event": "APPROVED", "message_template_name": "promo"},
            Unreadable("template event without name or language"),
        ),
        (
            "template_category_update",
            {
                "message_template_name": "w",
                "message_template_language": "en",
                "new_category": "UTILITY",
                "correct_category": "MARKETING",
            },
            TemplateUpdate("111", T0, "w", "en", None, category="UTILITY"),
        ),
        (
            "template_category_update",
            {"message_template_name": "w", "message_template_language": "en"},
            Unreadable("category update without new_category"),
        ),
        (
            "phone_number_quality_update",
            {
                "display_phone_number": "1555",
                "event": "DOWNGRADE",
                "current_limit": "TIER_1K",
                "old_limit": "TIER_10K",
                "max_daily_conversations_per_business": 1000,
            },
            NumberQuality("111", T0, "1555", "DOWNGRADE", "TIER_1K", "TIER_10K", "1000"),
        ),
        (
            "phone_number_quality_update",
            {"display_phone_number": "1"},
            Unreadable("quality update without event"),
        ),
        (
            "business_capability_update",
            {"max_daily_conversation_per_phone": "TIER_250", "max_phone_numbers_per_waba": "2"},
            Capability("111", T0, "TIER_250", 2),
        ),
        (
            "account_update",
            {
                "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [
                    {
                        "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                        "expiration": 2000000000,
                    },
                    {
                        "restriction_type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
                        "expiration": 1900000000,
                    },
                ],
            },
            AccountChange(
                "111",
                T0,
                "ACCOUNT_RESTRICTION",
                "pause",
                _t(2000000000),
                "restricted: RESTRICTED_BIZ_INITIATED_MESSAGING, "
                "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
            ),
        ),
        (
            # no expiration: until lifted
            "account_update",
            {
                "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING"}],
            },
            AccountChange(
                "111",
                T0,
                "ACCOUNT_RESTRICTION",
                "pause",
                None,
                "restricted: RESTRICTED_BIZ_INITIATED_MESSAGING",
            ),
        ),
        (
            "account_update",
            {
                "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [
                    {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1}
                ],
            },
            AccountChange(
                "111",
                T0,
                "ACCOUNT_RESTRICTION",
                "record",
                None,
                "restricted: RESTRICTED_ADD_PHONE_NUMBER_ACTION",
            ),
        ),
        (
            # the restriction list emptied: lifted
            "account_update",
            {"event": "ACCOUNT_RESTRICTION", "restriction_info": []},
            AccountChange(
                "111", T0, "ACCOUNT_RESTRICTION", "lift", None, "restricted: unspecified"
            ),
        ),
        (
            "account_update",
            {"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE"}},
            AccountChange("111", T0, "DISABLED_UPDATE", "pause", None, "ban state DISABLE"),
        ),
        (
            "account_update",
            {"event": "DISABLED_UPDATE"},
            AccountChange("111", T0, "DISABLED_UPDATE", "record", None, "ban state UNKNOWN"),
        ),
        ("account_update", {"ban_info": {}}, Unreadable("account update without event")),
        ("account_update", "nope", Unreadable("account_update without value")),
    ],
)
def test_parse_change(field: str, value: Any, expected: object) -> None:
    assert parse_change(field, value, ENTRY) == [expected]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (
            [
                {
                    "wa_id": "+4915",
                    "category": "marketing_messages",
                    "value": "STOP",
                    "timestamp": "5",
                }
            ],
            [PreferenceChange("4915", "marketing_messages", "stop", _t(5), None)],
        ),
        (
            [
                {
                    "user_id": "US.1",
                    "category": "marketing_messages",
                    "value": "resume",
                    "timestamp": 5,
                }
            ],
            [PreferenceChange("US.1", "marketing_messages", "resume", _t(5), None)],
        ),
        (
            [{"wa_id": "1", "category": "marketing_messages", "value": "stop"}],
            [Unreadable("preference without user, category, value or time")],
        ),
        (["x"], [Unreadable("preference not an object")]),
    ],
)
def test_user_preferences(items: list[Any], expected: list[object]) -> None:
    assert parse_change("user_preferences", {"user_preferences": items}, {}) == expected


def test_unreadable_parts_are_ignored_notes_in_the_notification() -> None:
    body = {"entry": [{"id": "1", "changes": [{"field": "account_update", "value": {}}]}]}
    assert parse_notification(body) == [Ignored("account update without event")]


def _plan(
    event: object,
    *,
    channel: str = "c",
    authenticated: bool = True,
    accounts: dict[str, str | None] | None = None,
) -> Any:
    seen = [AccountSeen(channel, event, 9, authenticated)]  # type: ignore[arg-type]
    return plan_account(seen, {"c": "111"} if accounts is None else accounts, T0)


def test_templates_are_keyed_by_the_channels_waba_or_its_id() -> None:
    update = TemplateUpdate("111", T0, "promo", "en", None, status="PAUSED")
    assert _plan(update).templates == [(TemplateKey("111", "promo", "en"), update)]
    assert _plan(update, accounts={"c": None}).templates == [
        (TemplateKey("c", "promo", "en"), update)
    ]
    other = _plan(TemplateUpdate("222", T0, "promo", "en", None, status="PAUSED"))
    assert other.templates == []
    assert [(e.effect, e.waba_id) for e in other.log] == [("ignored_other_waba", "222")]


@pytest.mark.parametrize(
    ("event", "pauses", "lifts", "effect"),
    [
        (
            AccountChange("111", T0, "DISABLED_UPDATE", "pause", None, "ban"),
            [("c", T0 + UNTIL_LIFTED, "DISABLED_UPDATE: ban")],
            [],
            "pause",
        ),
        (
            AccountChange("111", T0, "ACCOUNT_RESTRICTION", "pause", T0 + timedelta(hours=1), "r"),
            [("c", T0 + timedelta(hours=1), "ACCOUNT_RESTRICTION: r")],
            [],
            "pause",
        ),
        (
            AccountChange("111", T0, "ACCOUNT_RESTRICTION", "pause", T0 - timedelta(1), "r"),
            [],
            [],
            "expired",
        ),
        (AccountChange("111", T0, "DISABLED_UPDATE", "lift", None, "x"), [], ["c"], "lift"),
        (AccountChange("111", T0, "ACCOUNT_VIOLATION", "record", None, "x"), [], [], "recorded"),
    ],
)
def test_account_changes(
    event: AccountChange, pauses: list[Any], lifts: list[str], effect: str
) -> None:
    plan = _plan(event)
    assert (plan.pauses, plan.lifts, [e.effect for e in plan.log]) == (pauses, lifts, [effect])


def test_an_unauthenticated_body_acts_on_nothing() -> None:
    plan = _plan(
        AccountChange("111", T0, "DISABLED_UPDATE", "pause", None, "ban"), authenticated=False
    )
    assert (plan.pauses, plan.lifts) == ([], [])
    assert [(e.effect, e.webhook_event_id) for e in plan.log] == [("ignored_unauthenticated", 9)]


@pytest.mark.parametrize(
    ("word", "opted_out", "effect"),
    [("stop", True, "opted_out"), ("resume", False, "opted_in"), ("signup", None, "recorded")],
)
def test_preferences(word: str, opted_out: bool | None, effect: str) -> None:
    plan = _plan(PreferenceChange("4915", "marketing_messages", word, _t(5), "d"))
    assert [p.opted_out for p in plan.preferences] == ([] if opted_out is None else [opted_out])
    assert [e.effect for e in plan.log] == [effect]
    if plan.preferences:
        assert (plan.preferences[0].source, plan.preferences[0].at) == ("user_preferences", _t(5))


def test_quality_and_capability_are_health() -> None:
    quality = NumberQuality("111", None, "1", "FLAGGED", "TIER_1K", None, None)
    plan = _plan(quality)
    assert plan.health == [("c", quality)]
    assert plan.log[0].at == T0  # no time in the event: the reconciler's
