"""Username users in webhook bodies and send answers (issue 18 §1): every body of both shared
fixture folders that names a BSUID or changes an identity, and hand-made shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from outbox.domain.digest import WebhookRow, digest
from outbox.domain.notifications import Event, Ignored, Inbound, NumberChanged, parse_notification
from outbox.domain.response import Accepted, parse_send_response
from outbox.domain.user_ids import Addressed, Paired, PairSeen, UserIdChanged
from tests.paths import WEBHOOK_FIXTURES

FOLDERS = (WEBHOOK_FIXTURES, WEBHOOK_FIXTURES.parent / "webhooks-2026")
BSUID = "US.13491208655302741918"
ROTATED = "US.98765432100000000001"
COURIER = datetime.fromtimestamp(1454119029, UTC)
DOCS = datetime.fromtimestamp(1504902988, UTC)
PYWA = "972000000002"
IDENTITY = (Inbound, NumberChanged, Paired, UserIdChanged, Addressed)


def _identity_bodies() -> list[Path]:
    """Every body that names a BSUID (`user_id` anywhere) or is an identity notice."""
    return sorted(
        p
        for folder in FOLDERS
        if folder.is_dir()
        for p in folder.glob("*.json")
        if "user_id" in p.read_text() or p.name.split("__")[1] in ("system", "user-id-update")
    )


BODIES = _identity_bodies()
needs_fixtures = pytest.mark.skipif(not BODIES, reason="shared fixtures not beside the checkout")


def _pywa_contact() -> Paired:
    return Paired(PYWA, BSUID, "contacts")


# The identity events each body yields (Inbound, NumberChanged, Paired, UserIdChanged,
# Addressed), in order; INDEX.md's expected effects, read as "key on the BSUID".
EXPECTED: dict[str, list[Event]] = {
    # webhooks/: a username user is keyed on the BSUID (it was skipped before issue 18).
    "cloud__inbound__bsuid-only-no-wa-id.json": [
        Inbound("US.1234", "external_id", COURIER, "text")
    ],
    # pywa's bodies name the user's BSUID in contacts[] beside their number.
    "cloud__inbound__image-with-url.json": [
        Inbound(PYWA, "wamid.xyzxyz", datetime.fromtimestamp(1697043379, UTC), "image"),
        _pywa_contact(),
    ],
    "cloud__inbound__interactive-button-reply.json": [
        Inbound(PYWA, "wamid.xyzxyz", datetime.fromtimestamp(1698266730, UTC), "interactive"),
        _pywa_contact(),
    ],
    "cloud__inbound__referral-click-to-whatsapp.json": [
        Inbound(PYWA, "wamid.ID", datetime.fromtimestamp(1697045000, UTC), "text"),
        _pywa_contact(),
    ],
    "cloud__mixed__message-plus-value-errors-131000.json": [
        Inbound(
            PYWA, "wamid.wegrchytvwcggt=", datetime.fromtimestamp(1700505494, UTC), "interactive"
        ),
        _pywa_contact(),
    ],
    "cloud__status__failed-130472-experiment.json": [_pywa_contact()],
    "cloud__status__sent-biz-opaque-callback-data.json": [_pywa_contact()],
    "cloud__status__read-no-pricing-bsuid.json": [
        Paired("16315551181", BSUID, "status"),
        Paired("16315551181", BSUID, "contacts"),
    ],
    "cloud__status__sent-pmp-marketing-bsuid.json": [
        Paired("16315551181", BSUID, "status"),
        Paired("16315551181", BSUID, "contacts"),
    ],
    # On-Premise contacts cards carry `user_id` inside the card: not the sender's.
    "onprem__inbound__contacts-card.json": [
        Inbound(
            "16505551234",
            "ABGGFlA4dSRvAgo6C4Z53hMh1ugR",
            datetime.fromtimestamp(1537248012, UTC),
            "contacts",
        )
    ],
    # webhooks-2026/
    "cloud__inbound__bsuid-in-from-and-wa-id.json": [
        Inbound("US.1234", "external_id", COURIER, "text")
    ],
    "cloud__inbound__from-plus-from-user-id-username.json": [
        Paired("5678", "US.1234", "inbound"),
        Inbound("5678", "external_id", COURIER, "text"),
        Paired("5678", "US.1234", "contacts"),
    ],
    "cloud__inbound__username-only-parent-bsuid-no-phone.json": [
        Inbound(BSUID, "ABGGFlA5Fpa", DOCS, "text")
    ],
    "cloud__status__sent-pmp-to-bsuid-no-recipient-id.json": [Addressed("ABGGFlA5Fpa", BSUID)],
    "cloud__status__sent-recipient-user-id-only-cbp.json": [Addressed("external_id", BSUID)],
    "cloud__system__user-changed-number-meta-example.json": [
        NumberChanged("16505551234", "12195555358", datetime.fromtimestamp(1750269342, UTC))
    ],
    "cloud__system__user-changed-number-no-contacts.json": [
        NumberChanged(PYWA, "972000000003", datetime.fromtimestamp(1753851315, UTC))
    ],
    "cloud__user-id-update__bsuid-rotated.json": [UserIdChanged(BSUID, ROTATED, "5678")],
    # user_preferences is another slice's field: no pair is read from it here.
    "cloud__user-preferences__signup-value-with-bsuid-contact.json": [],
}
SEND_ANSWERS = {
    "cloud__send-response__201-contact-bsuid.json": Accepted("157b5e14568e8", None, "US.1234")
}


@needs_fixtures
def test_every_identity_body_has_an_expectation() -> None:
    assert sorted([*EXPECTED, *SEND_ANSWERS]) == sorted(p.name for p in BODIES)


@needs_fixtures
@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.stem)
def test_identity_body(path: Path) -> None:
    body = json.loads(path.read_bytes())
    if path.name in SEND_ANSWERS:
        assert parse_send_response(201, body) == SEND_ANSWERS[path.name]
        return
    events = parse_notification(body)
    assert [e for e in events if isinstance(e, IDENTITY)] == EXPECTED[path.name]


@needs_fixtures
def test_a_rotated_bsuid_moves_the_window_and_keeps_the_phone() -> None:
    path = FOLDERS[1] / "cloud__user-id-update__bsuid-rotated.json"
    found = digest([WebhookRow(1, "c", json.loads(path.read_bytes()))])
    assert found.identities.pairs == [PairSeen("c", "5678", ROTATED, "user_id_changed")]
    assert found.identities.moves == [("c", BSUID, ROTATED)]
    assert found.notes == [(1, f"user id changed to {ROTATED}")]
    assert found.inbound == []  # not a user message: the window is not refreshed


def _cloud(value: dict[str, Any]) -> dict[str, Any]:
    return {"entry": [{"changes": [{"field": "messages", "value": value}]}]}


TEXT = {"id": "m1", "timestamp": "1700000000", "type": "text", "text": {"body": "x"}}
AT = datetime.fromtimestamp(1700000000, UTC)

SHAPES: list[tuple[str, dict[str, Any], list[Event]]] = [
    (
        "phone and BSUID",
        _cloud({"messages": [{**TEXT, "from": "4915112345678", "from_user_id": "DE.a1"}]}),
        [Paired("4915112345678", "DE.a1", "inbound"), Inbound("4915112345678", "m1", AT, "text")],
    ),
    (
        "BSUID only, case kept",
        _cloud({"messages": [{**TEXT, "from_user_id": "DE.aBc9"}]}),
        [Inbound("DE.aBc9", "m1", AT, "text")],
    ),
    (
        "a parent id alone is no sender",
        _cloud(
            {"messages": [{**TEXT, "from_parent_user_id": "US.ENT.1", "from_user_id": "US.ENT.1"}]}
        ),
        [Ignored("message without sender")],
    ),
    (
        "BSUID too long",
        _cloud({"messages": [{**TEXT, "from_user_id": "US." + "1" * 129}]}),
        [Ignored("message without sender")],
    ),
    (
        "BSUID not a string",
        _cloud({"messages": [{**TEXT, "from_user_id": 12}]}),
        [Ignored("message without sender")],
    ),
    (
        "contacts user_id without wa_id: no pair",
        _cloud({"contacts": [{"user_id": "US.1"}], "messages": []}),
        [],
    ),
    (
        "contacts not a list",
        _cloud({"contacts": {"wa_id": "1", "user_id": "US.1"}, "messages": []}),
        [],
    ),
    (
        "status with both",
        _cloud(
            {
                "statuses": [
                    {
                        "id": "w",
                        "status": "sent",
                        "recipient_id": "49151",
                        "recipient_user_id": "US.7",
                    }
                ]
            }
        ),
        [Paired("49151", "US.7", "status")],
    ),
    (
        "status to a BSUID only",
        _cloud({"statuses": [{"id": "w", "status": "sent", "recipient_user_id": "US.7"}]}),
        [Addressed("w", "US.7")],
    ),
    (
        "system user_changed_user_id, Meta's placeholder names",
        _cloud(
            {
                "messages": [
                    {
                        "from": "4915112345678",
                        "id": "s",
                        "timestamp": "1700000000",
                        "type": "system",
                        "system": {
                            "type": "user_changed_user_id",
                            "previous_user_id": "US.1",
                            "new_user_id": "US.2",
                        },
                    }
                ]
            }
        ),
        [UserIdChanged("US.1", "US.2", "4915112345678")],
    ),
    (
        "system user_changed_user_id from a username user",
        _cloud(
            {
                "messages": [
                    {
                        "from_user_id": "US.1",
                        "id": "s",
                        "timestamp": "1700000000",
                        "type": "system",
                        "system": {"type": "user_changed_user_id", "user_id": "US.2"},
                    }
                ]
            }
        ),
        [UserIdChanged("US.1", "US.2", None)],
    ),
    (
        "system user_changed_user_id to the same id",
        _cloud(
            {
                "messages": [
                    {
                        "from_user_id": "US.1",
                        "type": "system",
                        "system": {"type": "user_changed_user_id", "user_id": "US.1"},
                    }
                ]
            }
        ),
        [],
    ),
    (
        "user_id_update without previous",
        {
            "entry": [
                {
                    "changes": [
                        {
                            "field": "user_id_update",
                            "value": {
                                "user_id_update": [
                                    {"wa_id": "5678", "user_id": {"current": "US.2"}}
                                ]
                            },
                        }
                    ]
                }
            ]
        },
        [Paired("5678", "US.2", "user_id_update")],
    ),
    (
        "user_id_update not understood",
        {
            "entry": [
                {
                    "changes": [
                        {
                            "field": "user_id_update",
                            "value": {"user_id_update": [{"wa_id": "5678", "user_id": "US.2"}, 7]},
                        }
                    ]
                }
            ]
        },
        [],
    ),
]


@pytest.mark.parametrize(("body", "expected"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_shape(body: dict[str, Any], expected: list[Event]) -> None:
    events = parse_notification(body)
    identity = [e for e in events if isinstance(e, IDENTITY)]
    if expected and isinstance(expected[0], Ignored):
        assert events == expected
    else:
        assert identity == expected
