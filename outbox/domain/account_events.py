"""Reads the WABA-level webhook fields: template, number-quality, account, capability events and
users' marketing preferences (waba-2026.md §1.1, §1.2; the 2026 corpus's INDEX).

Like `notifications`, it never raises: a part it cannot read is reported as `Ignored`. These
fields carry no per-item time but `entry[].time` (seconds); `user_preferences` items carry their
own `timestamp`. A WABA id is kept as given (it may be a placeholder such as "waba-id").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from outbox.domain import parsing

TEMPLATE_STATUS = "message_template_status_update"
TEMPLATE_QUALITY = "message_template_quality_update"
TEMPLATE_CATEGORY = "template_category_update"
NUMBER_QUALITY = "phone_number_quality_update"
ACCOUNT_UPDATE = "account_update"
ACCOUNT_ALERTS = "account_alerts"
CAPABILITY = "business_capability_update"
USER_PREFERENCES = "user_preferences"
FIELDS = frozenset(
    {
        TEMPLATE_STATUS,
        TEMPLATE_QUALITY,
        TEMPLATE_CATEGORY,
        NUMBER_QUALITY,
        ACCOUNT_UPDATE,
        ACCOUNT_ALERTS,
        CAPABILITY,
        USER_PREFERENCES,
    }
)
_TEXT = 200  # characters of a name, event or limit kept
_DETAIL = 1000


class AccountEvent:
    """What a WABA-level change says; one subclass per kind."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TemplateUpdate(AccountEvent):
    """A template's status, quality or category changed (only the fields the event carries)."""

    waba_id: str | None
    at: datetime | None
    name: str
    language: str  # as senders write it: Meta's webhooks say `en-US`, requests `en_US`
    template_id: str | None
    status: str | None = None
    category: str | None = None
    quality: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NumberQuality(AccountEvent):
    """A number's quality rating or messaging limit changed (FLAGGED, THROUGHPUT_UPGRADE, ...)."""

    waba_id: str | None
    at: datetime | None
    display_phone_number: str | None
    event: str
    current_limit: str | None
    old_limit: str | None
    max_daily: str | None  # `max_daily_conversations_per_business`: a number or a TIER_ name


@dataclass(frozen=True, slots=True)
class Capability(AccountEvent):
    """The portfolio's messaging limit and how many numbers a WABA may have."""

    waba_id: str | None
    at: datetime | None
    max_daily: str | None
    max_numbers: int | None


@dataclass(frozen=True, slots=True)
class AccountChange(AccountEvent):
    """`account_update` and `account_alerts`. `effect` is what the channel must do:
    `pause` (until `until`, or until lifted when None), `lift`, or `record` (an alert or news)."""

    waba_id: str | None
    at: datetime | None
    event: str
    effect: str
    until: datetime | None
    detail: str


@dataclass(frozen=True, slots=True)
class PreferenceChange(AccountEvent):
    """A user stopped or resumed a category of messages (`user_preferences`)."""

    identity: str  # the item's wa_id (digits) or, without one, its BSUID
    category: str
    value: str  # stop, resume, or another word (recorded, no opt-out change)
    at: datetime
    detail: str | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    reason: str


def parse_change(
    field: str, value: object, entry: dict[str, Any]
) -> list[AccountEvent | Unreadable]:
    """Every event one change of a WABA-level `field` holds."""
    if not isinstance(value, dict):
        return [Unreadable(f"{field} without value")]
    waba = parsing.text(str(entry["id"]) if isinstance(entry.get("id"), int) else entry.get("id"))
    at = parsing.unix_time(entry.get("time"))
    if field in (TEMPLATE_STATUS, TEMPLATE_QUALITY, TEMPLATE_CATEGORY):
        return [_template(field, value, waba, at)]
    if field == NUMBER_QUALITY:
        event = _upper(value.get("event"))
        if event is None:
            return [Unreadable("quality update without event")]
        return [
            NumberQuality(
                waba,
                at,
                _text(value.get("display_phone_number")),
                event,
                _text(value.get("current_limit")),
                _text(value.get("old_limit")),
                _text(value.get("max_daily_conversations_per_business")),
            )
        ]
    if field == CAPABILITY:
        numbers = parsing.error_code(value.get("max_phone_numbers_per_waba"))
        daily = _text(value.get("max_daily_conversations_per_business")) or _text(
            value.get("max_daily_conversation_per_phone")
        )
        return [Capability(waba, at, daily, numbers)]
    if field == ACCOUNT_UPDATE:
        return [_account(value, waba, at)]
    if field == ACCOUNT_ALERTS:
        info = value.get("alert_info")
        info = info if isinstance(info, dict) else {}
        event = _upper(info.get("alert_type")) or "ALERT"
        detail = " ".join(
            filter(
                None,
                (_text(info.get("alert_severity")), _text(info.get("alert_description"), _DETAIL)),
            )
        )
        return [AccountChange(waba, at, event, "record", None, detail)]
    return _preferences(value)


def _template(
    field: str, value: dict[str, Any], waba: str | None, at: datetime | None
) -> AccountEvent | Unreadable:
    name = _text(value.get("message_template_name"))
    language = _text(value.get("message_template_language"))
    if name is None or language is None:
        return Unreadable("template event without name or language")
    base = TemplateUpdate(
        waba, at, name, language.replace("-", "_"), _text(value.get("message_template_id"))
    )
    quality = _upper(value.get("new_quality_score"))
    if field == TEMPLATE_CATEGORY:
        category = _upper(value.get("new_category"))
        if category is None:
            return Unreadable("category update without new_category")
        # An announced change (`correct_category` from `category_update_timestamp` on) is not
        # one yet: `new_category` is still the current one; the completed change comes later.
        return replace(base, category=category)
    status = _upper(value.get("event"))
    if status is None:
        # Meta's own example files a quality update under the status field: read it by its keys,
        # and never infer a status from it.
        if quality is None:
            return Unreadable("template status update without event")
        return replace(base, quality=quality)
    if field == TEMPLATE_QUALITY:
        return replace(base, quality=quality)
    return replace(
        base,
        status=status,
        category=_upper(value.get("message_template_category")),
        reason=_reason(value),
    )


def _reason(value: dict[str, Any]) -> str | None:
    parts = [_text(value.get("reason"))]
    for key in ("rejection_info", "disable_info", "other_info"):
        info = value.get(key)
        if isinstance(info, dict):
            parts += [
                _text(info.get(k), _DETAIL)
                for k in ("title", "reason", "description", "recommendation")
            ]
    kept = [p for p in parts if p is not None and p.upper() != "NONE"]
    return "; ".join(kept) or None


def _account(
    value: dict[str, Any], waba: str | None, at: datetime | None
) -> AccountEvent | Unreadable:
    event = _upper(value.get("event"))
    if event is None:
        return Unreadable("account update without event")
    if event == "ACCOUNT_RESTRICTION":
        items = value.get("restriction_info")
        items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        kinds = [k for i in items if (k := _upper(i.get("restriction_type")))]
        messaging = [i for i in items if "MESSAGING" in (_upper(i.get("restriction_type")) or "")]
        detail = "restricted: " + (", ".join(kinds) or "unspecified")
        if not messaging:
            # Only other actions (adding a number) are restricted: sending goes on.
            return AccountChange(waba, at, event, "lift" if not items else "record", None, detail)
        ends = [parsing.unix_time(i.get("expiration")) for i in messaging]
        until = None if None in ends else max(e for e in ends if e is not None)
        return AccountChange(waba, at, event, "pause", until, detail)
    if event == "DISABLED_UPDATE":
        ban = value.get("ban_info")
        ban = ban if isinstance(ban, dict) else {}
        state = _upper(ban.get("waba_ban_state")) or "UNKNOWN"
        detail = " ".join(filter(None, (f"ban state {state}", _text(ban.get("waba_ban_date")))))
        effect = {"DISABLE": "pause", "REINSTATE": "lift"}.get(state, "record")
        return AccountChange(waba, at, event, effect, None, detail)
    info = value.get("violation_info") or value.get("volume_tier_info") or ""
    return AccountChange(waba, at, event, "record", None, _text(str(info), _DETAIL) or event)


def _preferences(value: dict[str, Any]) -> list[AccountEvent | Unreadable]:
    items = value.get("user_preferences")
    if not isinstance(items, list):
        return [Unreadable("user_preferences not a list")]
    found: list[AccountEvent | Unreadable] = []
    for item in items:
        if not isinstance(item, dict):
            found.append(Unreadable("preference not an object"))
            continue
        identity = _text(item.get("wa_id")) or _text(item.get("user_id"))
        category, word = _text(item.get("category")), _text(item.get("value"))
        at = parsing.unix_time(item.get("timestamp"))
        if identity is None or category is None or word is None or at is None:
            found.append(Unreadable("preference without user, category, value or time"))
            continue
        identity = identity.removeprefix("+")
        found.append(
            PreferenceChange(identity, category, word.lower(), at, _text(item.get("detail")))
        )
    return found


def _text(value: object, limit: int = _TEXT) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = parsing.text(value, limit)
    return None if text is None else parsing.storable(text, limit)


def _upper(value: object) -> str | None:
    text = _text(value)
    return None if text is None else text.upper()
