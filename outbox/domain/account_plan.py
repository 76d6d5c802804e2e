"""What WABA-level events do: template registry writes, marketing preferences, number health,
account pauses and lifts, and the event log (`outbox.account_events`). Pure: the reconciler's
store applies the plan inside the batch's transaction.

Only events from authenticated bodies act (a forged ban must not stop a channel, a forged
APPROVED must not release a template's rows); others are logged as ignored. An event that names
another WABA than its channel's configured `waba_id` changes nothing for that channel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from outbox.domain import preferences, templates
from outbox.domain.account_events import (
    AccountChange,
    AccountEvent,
    Capability,
    NumberQuality,
    PreferenceChange,
    TemplateUpdate,
)
from outbox.domain.preferences import Preference
from outbox.domain.templates import TemplateKey

# A ban (or a restriction with no end) pauses until lifted; the shared pause needs an end.
UNTIL_LIFTED = timedelta(days=3650)
PAUSED_BY = "account_update"  # `channel_state.paused_by` of an account pause


@dataclass(frozen=True, slots=True)
class AccountSeen:
    channel: str
    event: AccountEvent
    webhook_event_id: int | None = None
    authenticated: bool = True


@dataclass(frozen=True, slots=True)
class Logged:
    """One row of `outbox.account_events`: what happened and what it did."""

    channel: str
    waba_id: str | None
    kind: str
    event: str
    effect: str
    detail: str | None
    at: datetime
    webhook_event_id: int | None


@dataclass
class AccountPlan:
    templates: list[tuple[TemplateKey, TemplateUpdate]] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)
    health: list[tuple[str, NumberQuality | Capability]] = field(default_factory=list)
    pauses: list[tuple[str, datetime, str]] = field(default_factory=list)  # channel, until, why
    lifts: list[str] = field(default_factory=list)
    log: list[Logged] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, effect)


def plan_account(
    seen: Sequence[AccountSeen], accounts: Mapping[str, str | None], now: datetime
) -> AccountPlan:
    """`accounts` maps each configured channel to its `waba_id` (None when not configured)."""
    plan = AccountPlan()
    for item in seen:
        event, channel = item.event, item.channel
        waba = getattr(event, "waba_id", None)
        configured = accounts.get(channel)
        at = getattr(event, "at", None) or now
        kind, name, detail = _describe(event)
        if not item.authenticated:
            effect = "ignored_unauthenticated"
        elif configured is not None and waba is not None and waba != configured:
            effect = "ignored_other_waba"
        else:
            effect = _act(plan, item, templates.scope(configured, channel), at, now)
        plan.log.append(
            Logged(channel, waba, kind, name, effect, detail, at, item.webhook_event_id)
        )
        plan.counts[(kind, effect)] += 1
    return plan


def _act(plan: AccountPlan, item: AccountSeen, account: str, at: datetime, now: datetime) -> str:
    event, channel = item.event, item.channel
    match event:
        case TemplateUpdate():
            plan.templates.append((TemplateKey(account, event.name, event.language), event))
            return "template"
        case NumberQuality() | Capability():
            plan.health.append((channel, event))
            return "recorded"
        case PreferenceChange():
            if event.value not in ("stop", "resume"):
                return "recorded"
            evidence = {"value": event.value, "detail": event.detail}
            plan.preferences.append(
                Preference(
                    channel,
                    event.identity,
                    event.category,
                    event.value == "stop",
                    event.at,
                    preferences.SOURCE_USER_PREFERENCES,
                    evidence,
                )
            )
            return "opted_out" if event.value == "stop" else "opted_in"
        case AccountChange():
            if event.effect == "lift":
                plan.lifts.append(channel)
                return "lift"
            if event.effect == "pause":
                until = event.until or now + UNTIL_LIFTED
                if until <= now:
                    return "expired"
                plan.pauses.append((channel, until, f"{event.event}: {event.detail}"))
                return "pause"
            return "recorded"
    return "recorded"


def _describe(event: AccountEvent) -> tuple[str, str, str | None]:
    """(kind, event name, detail) for the log."""
    match event:
        case TemplateUpdate():
            change = event.status or (
                f"category {event.category}" if event.category else f"quality {event.quality}"
            )
            return (
                "template",
                change,
                f"{event.name} ({event.language}) {event.reason or ''}".strip(),
            )
        case NumberQuality():
            limits = f"limit {event.current_limit} (was {event.old_limit}) daily {event.max_daily}"
            return "number_quality", event.event, f"{event.display_phone_number}: {limits}"
        case Capability():
            detail = f"max daily {event.max_daily}, numbers per WABA {event.max_numbers}"
            return "capability", "BUSINESS_CAPABILITY_UPDATE", detail
        case PreferenceChange():
            return "preference", event.value.upper(), f"{event.identity} {event.category}"
        case AccountChange():
            return "account", event.event, event.detail
    return "other", type(event).__name__, None
