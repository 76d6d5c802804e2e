"""Per-message pricing as status webhooks report it (waba-2026.md §1.3), and what it is checked
against: the category the template registry holds.

`pricing {pricing_model, category, type, billable}`: category and type are open vocabularies
(Meta and BSPs add values), so they are kept as given, lower case and bounded. `billable` is
marked deprecated: when it is absent, a `regular` type counts as billed (the free types say
so in their name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from outbox.domain import parsing

VALUE_LIMIT = 64  # characters; the columns' check allows 64 bytes, values are ASCII words
_WORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# Meta's billing categories that are a registry category under another name.
_SAME_AS = {
    "marketing_lite": "marketing",
    "authentication_international": "authentication",
}


@dataclass(frozen=True, slots=True)
class Pricing:
    category: str | None
    type: str | None
    billable: bool
    # Per-message pricing (PMP, or no model named); the older conversation-based model (CBP)
    # bills conversations, not messages, and is not counted as billed messages.
    per_message: bool = True


def _word(value: object) -> str | None:
    text = parsing.text(value)
    if text is None or len(text) > VALUE_LIMIT:
        return None
    text = text.lower()
    return text if set(text) <= _WORD else None


def parse(value: object) -> Pricing | None:
    """A status's `pricing` object; None when absent or when it names neither a category nor
    a type. A value that is not a plain word is dropped rather than stored."""
    if not isinstance(value, dict):
        return None
    category, kind = _word(value.get("category")), _word(value.get("type"))
    if category is None and kind is None:
        return None
    billable: Any = value.get("billable")
    model = _word(value.get("pricing_model"))
    return Pricing(
        category,
        kind,
        billable if isinstance(billable, bool) else kind == "regular",
        model in (None, "pmp"),
    )


def to_json(pricing: Pricing | None) -> dict[str, Any] | None:
    if pricing is None:
        return None
    return {
        "category": pricing.category,
        "type": pricing.type,
        "billable": pricing.billable,
        "pricing_model": "PMP" if pricing.per_message else "CBP",
    }


def mismatch(registry_category: str | None, billed: str | None) -> bool:
    """Whether Meta billed a template under another category than the registry holds: a cost
    and a consent risk (Meta re-categorises templates). Unknown on either side is no mismatch,
    nor are service messages (not templates)."""
    if registry_category is None or billed is None or billed == "service":
        return False
    return _SAME_AS.get(billed, billed) != registry_category.lower()


@dataclass(frozen=True, slots=True)
class Priced:
    """A row's pricing as written: `first` when the row had none before (it is counted once),
    with the registry's category of the template it went out as, if known."""

    channel: str
    message_id: int
    pricing: Pricing
    first: bool
    registry_category: str | None

    @property
    def mismatched(self) -> bool:
        return mismatch(self.registry_category, self.pricing.category)
