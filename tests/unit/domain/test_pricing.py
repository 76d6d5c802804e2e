"""Per-message pricing from status webhooks (issue 18, waba-2026.md §1.3): what is kept, what
counts as billed, and what is a category mismatch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from outbox.domain import pricing
from outbox.domain.notifications import StatusUpdate, parse_notification
from outbox.domain.parked import status_from_json, status_to_json
from outbox.domain.pricing import Pricing
from tests.paths import WEBHOOK_FIXTURES

CORPUS = WEBHOOK_FIXTURES.parent / "webhooks-2026"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"billable": True, "pricing_model": "PMP", "category": "marketing", "type": "regular"},
            Pricing("marketing", "regular", True),
        ),
        (
            {
                "billable": False,
                "pricing_model": "PMP",
                "category": "service",
                "type": "free_customer_service",
            },
            Pricing("service", "free_customer_service", False),
        ),
        # `billable` is deprecated: without it, `regular` is billed, the free types are not.
        ({"category": "utility", "type": "regular"}, Pricing("utility", "regular", True)),
        (
            {"category": "utility", "type": "free_entry_point"},
            Pricing("utility", "free_entry_point", False),
        ),
        # Conversation-based pricing bills conversations: kept, not counted per message.
        (
            {"billable": True, "pricing_model": "CBP", "category": "business_initiated"},
            Pricing("business_initiated", None, True, per_message=False),
        ),
        (
            {"category": "MARKETING_LITE", "type": "Regular"},
            Pricing("marketing_lite", "regular", True),
        ),
        # Hostile or empty values are dropped, never stored.
        ({"category": "x" * 65, "type": "regular"}, Pricing(None, "regular", True)),
        ({"category": "mar keting\\u0000"}, None),
        ({"category": 7, "type": None}, None),
        ({}, None),
        ("pricing", None),
        (None, None),
    ],
)
def test_parse(value: Any, expected: Pricing | None) -> None:
    assert pricing.parse(value) == expected
    if expected is not None:
        assert pricing.parse(pricing.to_json(expected)) == expected  # parked and read back


@pytest.mark.parametrize(
    ("registry", "billed", "mismatched"),
    [
        ("MARKETING", "marketing", False),
        ("UTILITY", "marketing", True),
        ("MARKETING", "marketing_lite", False),
        ("AUTHENTICATION", "authentication_international", False),
        ("AUTHENTICATION", "utility", True),
        (None, "marketing", False),
        ("UTILITY", None, False),
        ("UTILITY", "service", False),
    ],
)
def test_mismatch(registry: str | None, billed: str | None, mismatched: bool) -> None:
    assert pricing.mismatch(registry, billed) is mismatched


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared fixtures not beside the checkout")
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "cloud__status__sent-pmp-regular-marketing-meta-2026",
            Pricing("marketing", "regular", True),
        ),
        (
            "cloud__status__delivered-pmp-free-customer-service-capture",
            Pricing("service", "free_customer_service", False),
        ),
        ("cloud__status__sent-pmp-to-bsuid-no-recipient-id", Pricing("marketing", "regular", True)),
        (
            "cloud__status__sent-recipient-user-id-only-cbp",
            Pricing("referral_conversion", None, False, per_message=False),
        ),
        ("cloud__status__failed-131049-meta-2026", None),
        ("cloud__status__failed-131050-marketing-stopped-capture", None),
    ],
)
def test_the_2026_status_bodies(name: str, expected: Pricing | None) -> None:
    # Bodies naming a BSUID also give phone-BSUID pairs (issue 18 §1): the status is the one.
    events = parse_notification(json.loads((CORPUS / f"{name}.json").read_bytes()))
    [event] = [e for e in events if isinstance(e, StatusUpdate)]
    assert event.pricing == expected
    assert status_from_json(status_to_json(event)) == event
