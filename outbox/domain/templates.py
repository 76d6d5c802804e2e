"""The template registry's vocabulary: which template a request uses, and what its entry means.

Template statuses and categories are kept as Meta spells them (upper case). A template whose
status is held (paused, disabled, rejected) holds the rows that use it until it is active again;
a template of unknown status is sent (the API will say). Its category decides whether a
spam-rate hold (131048) and a marketing opt-out (131050) apply: unknown counts as marketing, the
cautious reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Required, TypedDict

from outbox.domain import parsing

MARKETING = "MARKETING"
UTILITY = "UTILITY"
AUTHENTICATION = "AUTHENTICATION"
# Statuses whose rows wait: Meta's pause (pacing or the quality ladder), a disabled or rejected
# template (INDEX of the 2026 corpus: held until APPROVED for the same name and language).
HELD_STATUSES = frozenset({"PAUSED", "DISABLED", "REJECTED", "LOCKED", "ARCHIVED"})
# What `outbox templates resume` and an unpause write.
ACTIVE = "APPROVED"

NAME_LIMIT = 512
LANGUAGE_LIMIT = 32
WABA_LIMIT = 128
VALUE_LIMIT = 64  # characters of a status, category or quality
REASON_LIMIT = 500


class TemplateKey(NamedTuple):
    """A template as the registry keys it; `waba_id` is the channel's WABA (or its id)."""

    waba_id: str
    name: str
    language: str


class TemplateEvent(TypedDict, total=False):
    """What one event says of a template (each field only when it says it): where it came
    from (`webhook`, `send`, `status`, `operator`), its time, and the new values."""

    source: Required[str]
    at: datetime | None
    status: str | None
    category: str | None
    quality: str | None
    template_id: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """One registry entry, as the sender reads it."""

    id: int
    status: str | None
    category: str | None
    quality: str | None = None

    @property
    def held(self) -> bool:
        return self.status is not None and self.status in HELD_STATUSES


def scope(waba_id: str | None, channel_id: str) -> str:
    """Where a channel's templates live in the registry: its WABA, or the channel itself when
    no `waba_id` is configured (WABA-level events then cannot reach them)."""
    return waba_id or channel_id


def held(status: str | None) -> bool:
    return status is not None and status.upper() in HELD_STATUSES


def is_marketing(category: str | None) -> bool:
    """A category counts as marketing unless the registry knows it is not (unknown included)."""
    return category is None or category.upper() not in (UTILITY, AUTHENTICATION)


def value(raw: object) -> str | None:
    """A status, category or quality as stored: upper case, bounded, NULL when absent."""
    text = parsing.text(raw, VALUE_LIMIT)
    return parsing.storable(text, VALUE_LIMIT).upper() or None if text else None


def template_of(content: Any) -> tuple[str, str] | None:
    """The (name, language code) a template request body names; None for anything else.

    Both dialects spell it `template: {name, language: {code}}` (On-Premise adds `policy`);
    the older `hsm` body has no registry entry to look up."""
    if not isinstance(content, dict) or content.get("type") != "template":
        return None
    template = content.get("template")
    if not isinstance(template, dict):
        return None
    name = parsing.text(template.get("name"), NAME_LIMIT)
    language = template.get("language")
    code = (
        parsing.text(language.get("code"), LANGUAGE_LIMIT) if isinstance(language, dict) else None
    )
    if name is None or code is None:
        return None
    return parsing.storable(name, NAME_LIMIT), parsing.storable(code, LANGUAGE_LIMIT)
