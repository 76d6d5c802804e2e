"""parse_notification: the shared fixture corpus, hand-made shapes of both dialects, and garbage."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox.domain.notifications import (
    ErrorNotice,
    Event,
    Ignored,
    Inbound,
    NumberChanged,
    StatusUpdate,
    parse_notification,
)
from outbox.domain.user_ids import Addressed, Paired
from tests.paths import WEBHOOK_FIXTURES

FIXTURES = WEBHOOK_FIXTURES
PARSED_KINDS = {"inbound", "status", "error", "mixed"}
NOTIFICATIONS = (
    sorted(p for p in FIXTURES.glob("*.json") if p.name.split("__")[1] in PARSED_KINDS)
    if FIXTURES.is_dir()
    else []
)
needs_fixtures = pytest.mark.skipif(
    not NOTIFICATIONS, reason="shared fixtures not beside the checkout"
)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def inbound(wa_id: str, message_id: str | None, seconds: int, kind: str) -> Inbound:
    return Inbound(wa_id, message_id, at(seconds), kind)


def status(
    wamid: str,
    value: str,
    seconds: int | None,
    recipient: str | None,
    code: int | None = None,
    title: str | None = None,
    detail: str | None = None,
    outbox_id: int | None = None,
) -> StatusUpdate:
    when = None if seconds is None else at(seconds)
    return StatusUpdate(wamid, value, when, recipient, outbox_id, code, title, detail)


BINDA_WAMID = "wamid.nBgN6TUyN2k5NzAzM5kzNhUCABI8FDNFQjAxQkE5REI4NEUzQ5Y5QTNgAA=="
DOC_ID = "ABGGFlA5FpafAgo6tHcNmNjXmuSf"
COURIER_TS = 1454119029

# INDEX.md's "expected effect" column, as events.
EXPECTED: dict[str, list[Event]] = {
    # --- On-Premise inbound
    "onprem__inbound__text-with-contacts.json": [
        inbound("16315551234", DOC_ID, 1518694235, "text")
    ],
    "onprem__inbound__location.json": [inbound("16315551234", DOC_ID, 1521497875, "location")],
    "onprem__inbound__contacts-card.json": [
        # Keyed on messages[].from, not on contacts[].wa_id (16315551234).
        inbound("16505551234", "ABGGFlA4dSRvAgo6C4Z53hMh1ugR", 1537248012, "contacts")
    ],
    "onprem__inbound__unknown-type-error-501.json": [
        inbound("16315551234", "ABGGFRBzFymPAgo6N9KKs7HsN6eB", 1531933468, "unknown")
    ],
    "onprem__inbound__button-template-reply.json": [
        inbound("16505551234", "ABGGFmkiWVVPAgo-sKD87hgxPHdF", 1591210827, "button")
    ],
    "onprem__inbound__image-no-contacts.json": [
        inbound("16315551234", DOC_ID, 1521497954, "image")
    ],
    "onprem__inbound__reply-with-context.json": [
        inbound("16315551234", "gBGGFlA5FpafAgkOuJbRq54qwbM", 1521499915, "text")
    ],
    "onprem__inbound__system-user-changed-number.json": [
        NumberChanged("16315558889", "16315558890", datetime.fromtimestamp(1574080102, UTC))
    ],
    "onprem__inbound__group-mentions-trailing-space-from.json": [
        inbound("16315551234", DOC_ID, 1504902988, "text")
    ],
    "onprem__inbound__interactive-button-reply.json": [
        inbound("250000000001", "41", COURIER_TS, "interactive")
    ],
    "onprem__inbound__interactive-list-reply.json": [
        inbound("250000000001", "41", COURIER_TS, "interactive")
    ],
    "onprem__inbound__duplicate-same-id-twice.json": [
        inbound("250000000001", "41", COURIER_TS, "text"),
        Ignored("duplicate message"),
    ],
    "onprem__inbound__text-turn-vnd-extension.json": [
        inbound(
            "2340000000001",
            "wamid.HBgNMjM0MDAwMDAwMDAwMRUCABIYFDNGODg1NDQxRDE0MjFGOURBOUY1AA==",
            1735424273,
            "text",
        )
    ],
    # --- On-Premise statuses
    "onprem__status__sent-conversation-pricing.json": [
        status("gBGGEgFVUXl_AgkUBIUqicVXyZY", "sent", 1609879800, "12015551797")
    ],
    "onprem__status__delivered-conversation-pricing.json": [
        status("gBGGEgFVUXl_AgmQ1p4lCm7vdfo", "delivered", 1610413994, "12015551797")
    ],
    "onprem__status__read-conversation-pricing.json": [
        status("gBGGFlB5YjhvAgnhuF1qIUvCo7A", "read", 1610561171, "16315555555")
    ],
    "onprem__status__failed-470-outside-window.json": [
        status(
            "gBGGEgZHMlEfAgkM1RBkhDRr7t8",
            "failed",
            1533332775,
            "10000000001",
            470,
            "Failed to send message because you are outside the support window for freeform messages to this user. Please use a valid HSM notification or reconsider.",
        )
    ],
    "onprem__status__failed-480-identity-change.json": [
        status(
            "gBGGFjFVU2AfAgldhhKwWDGSrTs",
            "failed",
            1602535356,
            "16315553601",
            480,
            "Failed to send message since we detect an identity change of the contact",
        )
    ],
    "onprem__status__deleted.json": [
        status("ABGGFmkiWVVPAgo66iFiii_-TG0-", "deleted", 1532413514, "10000000002")
    ],
    "onprem__status__failed-131026-cloud-codes-in-flat-body.json": [
        status(
            "wamid.HBgFMzE1MzEVAgARGBIzMzQ2RUY0MUU4OTJGOEM5MjAA",
            "failed",
            1735425598,
            "2700000003",
            131026,
            "Message undeliverable",
            "Message Undeliverable.",
        )
    ],
    "onprem__status__sent-cloud-backed-service-conversation.json": [
        status(
            "wamid.HBgNMjM0MDAwMDAwMDAwMRUCABEYEjdCMTJFNUZDNzNFQjkxQ0IyRQA=",
            "sent",
            1735424268,
            "2340000000001",
        )
    ],
    "onprem__status__delivered-recipient-in-message-object.json": [
        status("gBEGRHQnRBM2AglN0MpYOUgzMWo", "delivered", 1680519050, "1234567890")
    ],
    "onprem__status__delivered-no-recipient.json": [
        status("gBEGRHQnRBM2AglN0MpYOUgzMWo", "delivered", 1680519050, None)
    ],
    # --- On-Premise errors
    "onprem__error__media-download-400.json": [
        ErrorNotice(400, "Media download error", "Failed to download the media from the sender.")
    ],
    # --- Cloud inbound
    "cloud__inbound__text.json": [inbound("1111111111111", BINDA_WAMID, 1672947578, "text")],
    "cloud__inbound__image-with-url.json": [
        inbound("972000000002", "wamid.xyzxyz", 1697043379, "image")
    ],
    "cloud__inbound__contacts.json": [
        inbound(
            "1111111111111",
            "wamid.HBgNNEMkNETUyNUCDkzNABIYFDNFQjA1zk5NzAzMhQjA5OTFQjNFQkU3AA==",
            1673641462,
            "contacts",
        )
    ],
    "cloud__inbound__reaction.json": [
        inbound("1111111111111", BINDA_WAMID, 1673026587, "reaction")
    ],
    "cloud__inbound__button-template-reply.json": [
        inbound("1111111111111", BINDA_WAMID, 1673023653, "button")
    ],
    "cloud__inbound__interactive-button-reply.json": [
        inbound("972000000002", "wamid.xyzxyz", 1698266730, "interactive")
    ],
    "cloud__inbound__nfm-reply-flow.json": [
        inbound("5678", "external_id", COURIER_TS, "interactive")
    ],
    "cloud__inbound__unsupported-131051.json": [
        inbound("1111111111111", BINDA_WAMID, 1673026174, "unsupported")
    ],
    "cloud__inbound__referral-click-to-whatsapp.json": [
        inbound("972000000002", "wamid.ID", 1697045000, "text")
    ],
    "cloud__inbound__duplicate-same-id-twice.json": [
        inbound("5678", "external_id", COURIER_TS, "text"),
        Ignored("duplicate message"),
    ],
    # Updated 2026-12 (issue 18): a username user is keyed on their BSUID, not skipped.
    "cloud__inbound__bsuid-only-no-wa-id.json": [
        inbound("US.1234", "external_id", COURIER_TS, "text")
    ],
    # --- Cloud statuses
    "cloud__status__sent-cbp-business-initiated.json": [
        status(BINDA_WAMID, "sent", 1673020317, "1111111111111")
    ],
    "cloud__status__delivered-cbp.json": [
        status(BINDA_WAMID, "delivered", 1673020317, "1111111111111")
    ],
    "cloud__status__read-no-pricing-bsuid.json": [
        status("ABGGFlA5Fpa", "read", 1504902988, "16315551181")
    ],
    "cloud__status__sent-pmp-marketing-bsuid.json": [
        status("ABGGFlA5Fpa", "sent", 1504902988, "16315551181")
    ],
    # "some data" is not ours, so no outbox id.
    "cloud__status__sent-biz-opaque-callback-data.json": [
        status("wamid.xyzxyz", "sent", 1698266945, "972000000002")
    ],
    "cloud__status__failed-131047-reengagement.json": [
        status(
            "wamid.HBgNN5NzAzMDkTUyNzkzNhUEjA1MjUwNCAUIyNEYUQ0OTVGNTY0MwA=",
            "failed",
            1682651887,
            "5511111111111",
            131047,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        )
    ],
    "cloud__status__failed-130472-experiment.json": [
        status(
            "wamid.xyzxyz",
            "failed",
            1689380458,
            "972000000002",
            130472,
            "User's number is part of an experiment",
            "Failed to send message because this user's phone number is part of an experiment",
        )
    ],
    "cloud__status__failed-131014-with-conversation-pricing.json": [
        status(
            "external_id",
            "failed",
            COURIER_TS,
            "5678",
            131014,
            "Request for url https://URL.jpg failed with error: 404 (Not Found)",
        )
    ],
    "cloud__status__deleted.json": [status("external_id", "deleted", COURIER_TS, "5678")],
    # An unknown value is passed through; delivery.merge answers NOT_DELIVERY for it.
    "cloud__status__unknown-value-in_orbit.json": [
        status("external_id", "in_orbit", COURIER_TS, "5678")
    ],
    # --- Cloud errors and mixed bodies
    "cloud__error__value-level-errors-code-0.json": [
        ErrorNotice(0, "We were unable to authenticate the app user", None)
    ],
    "cloud__mixed__message-plus-value-errors-131000.json": [
        inbound("972000000002", "wamid.wegrchytvwcggt=", 1700505494, "interactive"),
        ErrorNotice(131000, "Something went wrong", "Unsupported webhook payload"),
    ],
    "cloud__mixed__two-entries-second-empty-changes.json": [
        inbound("5678", "external_id", COURIER_TS, "text")
    ],
}


@needs_fixtures
def test_every_parsed_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == [p.name for p in NOTIFICATIONS]


@needs_fixtures
@pytest.mark.parametrize("path", NOTIFICATIONS, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    # Phone-BSUID pairs are tested on their own (tests/unit/domain/test_identity_events.py);
    # pricing (issue 18) has its own table: tests/unit/domain/test_pricing.py.
    events = [
        replace(e, pricing=None) if isinstance(e, StatusUpdate) else e
        for e in parse_notification(json.loads(path.read_bytes()))
        if not isinstance(e, Paired)
    ]
    assert events == EXPECTED[path.name]


def cloud(value: Any, field: Any = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}],
    }


TEXT = {"from": "491234", "id": "m1", "timestamp": "1700000000", "type": "text"}
SENT = {"id": "w1", "status": "sent", "timestamp": "1700000001", "recipient_id": "491234"}
SENT_EVENT = status("w1", "sent", 1700000001, "491234")

SHAPES: list[tuple[str, Any, list[Event]]] = [
    ("onprem text", {"messages": [TEXT]}, [inbound("491234", "m1", 1700000000, "text")]),
    ("cloud text", cloud({"messages": [TEXT]}), [inbound("491234", "m1", 1700000000, "text")]),
    ("onprem status", {"statuses": [SENT]}, [SENT_EVENT]),
    ("cloud status", cloud({"statuses": [SENT]}), [SENT_EVENT]),
    (
        "messages, statuses and errors in one value, in that order",
        cloud({"errors": [{"code": 1}], "statuses": [SENT], "messages": [TEXT]}),
        [inbound("491234", "m1", 1700000000, "text"), SENT_EVENT, ErrorNotice(1, "error", None)],
    ),
    (
        "duplicates across entries are dropped too",
        {"entry": [{"changes": [{"field": "messages", "value": {"messages": [TEXT]}}]}] * 2},
        [inbound("491234", "m1", 1700000000, "text"), Ignored("duplicate message")],
    ),
    (
        "messages without an id are never de-duplicated",
        {"messages": [{**TEXT, "id": None}, {**TEXT, "id": None}]},
        [inbound("491234", None, 1700000000, "text")] * 2,
    ),
    (
        "sender normalised",
        {"messages": [{**TEXT, "from": " +49 123 4 "}]},
        [inbound("491234", "m1", 1700000000, "text")],
    ),
    (
        "integer timestamp, missing type",
        {"messages": [{"from": "1", "timestamp": 0}]},
        [inbound("1", None, 0, "unknown")],
    ),
    (
        "status value lower-cased, recipient from the Turn message object",
        {"statuses": [{"id": "w", "status": " READ ", "message": {"recipient_id": "+1 555"}}]},
        [status("w", "read", None, "1555")],
    ),
    (
        "unusable recipient_id falls back to message.recipient_id",
        {
            "statuses": [
                {
                    "id": "w",
                    "status": "sent",
                    "recipient_id": "US.1",
                    "message": {"recipient_id": "12"},
                }
            ]
        },
        # A BSUID where the number should be names the user (issue 18).
        [Addressed("w", "US.1"), status("w", "sent", None, "12")],
    ),
    (
        "string error code, message used when error_data is absent",
        {
            "statuses": [
                {
                    "id": "w",
                    "status": "failed",
                    "errors": [{"code": "131026", "title": "T", "message": "M", "details": "D"}],
                }
            ]
        },
        [status("w", "failed", None, None, 131026, "T", "M")],
    ),
    (
        "details used last",
        {"statuses": [{"id": "w", "status": "failed", "errors": [{"code": 1, "details": "D"}]}]},
        [status("w", "failed", None, None, 1, None, "D")],
    ),
    (
        "only the first error counts",
        {"statuses": [{"id": "w", "status": "failed", "errors": [{"code": 1}, {"code": 2}]}]},
        [status("w", "failed", None, None, 1)],
    ),
    (
        "error notice title falls back to message",
        {"errors": [{"code": "7", "message": "M"}]},
        [ErrorNotice(7, "M", "M")],
    ),
    ("contacts only", {"contacts": [{"wa_id": "1"}]}, [Ignored("no messages, statuses or errors")]),
    (
        "empty cloud body",
        {"object": "whatsapp_business_account", "entry": []},
        [Ignored("no messages, statuses or errors")],
    ),
    (
        "other field",
        cloud({"messages": [TEXT]}, field="security"),
        [Ignored("unknown field entry")],
    ),
    (
        # a WABA-level field is read by outbox.domain.account_events, never as messages
        "account field with messages in it",
        cloud({"messages": [TEXT]}, field="account_update"),
        [Ignored("account update without event")],
    ),
    (
        "missing field",
        {"entry": [{"changes": [{"value": {"messages": [TEXT]}}]}]},
        [Ignored("unknown field entry")],
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in SHAPES], ids=[c[0] for c in SHAPES])
def test_shapes(body: Any, expected: list[Event]) -> None:
    assert parse_notification(body) == expected


ODD: list[tuple[str, Any, list[Event]]] = [
    ("null", None, [Ignored("not a WhatsApp notification")]),
    ("string", "messages", [Ignored("not a WhatsApp notification")]),
    ("number", 1, [Ignored("not a WhatsApp notification")]),
    ("list", [{"messages": []}], [Ignored("not a WhatsApp notification")]),
    ("unrelated object", {"hello": "world"}, [Ignored("not a WhatsApp notification")]),
    ("entry not a list", {"entry": {"changes": []}}, [Ignored("not a WhatsApp notification")]),
    (
        "garbage entries among good ones",
        {
            "entry": [
                1,
                None,
                {},
                {"changes": "x"},
                {"changes": [None, {"field": "messages"}, {"field": "messages", "value": []}]},
                {"changes": [{"field": "messages", "value": {"statuses": [SENT]}}]},
            ]
        },
        [
            Ignored("entry not an object"),
            Ignored("entry not an object"),
            Ignored("entry without changes"),
            Ignored("entry without changes"),
            Ignored("change not an object"),
            Ignored("change without value"),
            Ignored("change without value"),
            SENT_EVENT,
        ],
    ),
    (
        "lists of the wrong type",
        {"messages": {}, "statuses": "x", "errors": 3},
        [
            Ignored("messages not a list"),
            Ignored("statuses not a list"),
            Ignored("errors not a list"),
        ],
    ),
    (
        "null lists",
        {"messages": None, "statuses": None},
        [Ignored("no messages, statuses or errors")],
    ),
    (
        "items not objects",
        {"messages": [1], "statuses": ["s"], "errors": [[]]},
        [
            Ignored("message not an object"),
            Ignored("status not an object"),
            Ignored("error not an object"),
        ],
    ),
    # Since issue 18 a username user is keyed on their BSUID (tests/unit/domain/test_identity_events.py).
    (
        "BSUID-only sender",
        {"messages": [{**TEXT, "from": None, "from_user_id": "US.1"}]},
        [inbound("US.1", "m1", 1700000000, "text")],
    ),
    (
        "sender neither a number nor a BSUID",
        {"messages": [{**TEXT, "from": "US-1234"}]},
        [Ignored("message without sender")],
    ),
    (
        "sender an int",
        {"messages": [{**TEXT, "from": 491234}]},
        [Ignored("message without sender")],
    ),
    ("sender empty", {"messages": [{**TEXT, "from": " + "}]}, [Ignored("message without sender")]),
    ("system before sender", {"messages": [{"type": "system"}]}, [Ignored("system message")]),
    (
        "no timestamp",
        {"messages": [{**TEXT, "timestamp": None}]},
        [Ignored("message without timestamp")],
    ),
    (
        "bool timestamp",
        {"messages": [{**TEXT, "timestamp": True}]},
        [Ignored("message without timestamp")],
    ),
    (
        "negative timestamp",
        {"messages": [{**TEXT, "timestamp": -1}]},
        [Ignored("message without timestamp")],
    ),
    (
        "negative string timestamp",
        {"messages": [{**TEXT, "timestamp": "-1"}]},
        [Ignored("message without timestamp")],
    ),
    (
        "float timestamp",
        {"messages": [{**TEXT, "timestamp": 1700000000.0}]},
        [Ignored("message without timestamp")],
    ),
    (
        "infinite timestamp",
        {"messages": [{**TEXT, "timestamp": float("inf")}]},
        [Ignored("message without timestamp")],
    ),
    (
        "1e400",
        json.loads('{"messages": [{"from": "1", "timestamp": 1e400}]}'),
        [Ignored("message without timestamp")],
    ),
    (
        "400 nines",
        {"messages": [{**TEXT, "timestamp": "9" * 400}]},
        [Ignored("message without timestamp")],
    ),
    (
        "4000 nines as int",
        {"messages": [{**TEXT, "timestamp": int("9" * 4000)}]},
        [Ignored("message without timestamp")],
    ),
    (
        "year 10000",
        {"messages": [{**TEXT, "timestamp": 253402300800}]},
        [Ignored("message without timestamp")],
    ),
    (
        "hex timestamp",
        {"messages": [{**TEXT, "timestamp": "0x10"}]},
        [Ignored("message without timestamp")],
    ),
    (
        "non-ASCII digits",
        {"messages": [{**TEXT, "timestamp": "١٧٠٠٠٠٠٠٠٠"}]},
        [Ignored("message without timestamp")],
    ),
    (
        "id and type of the wrong type",
        {"messages": [{**TEXT, "id": 5, "type": ["text"]}]},
        [inbound("491234", None, 1700000000, "unknown")],
    ),
    (
        "status without id",
        {
            "statuses": [
                {"status": "sent"},
                {"id": "", "status": "sent"},
                {"id": 7, "status": "sent"},
            ]
        },
        [Ignored("status without id")] * 3,
    ),
    (
        "status without value",
        {"statuses": [{"id": "w"}, {"id": "w", "status": 3}]},
        [Ignored("status without value")] * 2,
    ),
    (
        "status fields of the wrong type",
        {
            "statuses": [
                {
                    "id": "w",
                    "status": "failed",
                    "timestamp": [],
                    "recipient_id": 5,
                    "message": "x",
                    "biz_opaque_callback_data": 12,
                    "errors": {"code": 1},
                }
            ]
        },
        [status("w", "failed", None, None)],
    ),
    (
        "error entry fields of the wrong type",
        {
            "statuses": [
                {
                    "id": "w",
                    "status": "failed",
                    "errors": [{"code": True, "title": 1, "error_data": "x", "message": None}],
                }
            ]
        },
        [status("w", "failed", None, None)],
    ),
    (
        "first error not an object",
        {"statuses": [{"id": "w", "status": "failed", "errors": ["x", {"code": 1}]}]},
        [status("w", "failed", None, None)],
    ),
    (
        "absurd error codes",
        {"errors": [{"code": 10**30}, {"code": -1}, {"code": "1e3"}, {"code": 1.0}]},
        [ErrorNotice(None, "error", None)] * 4,
    ),
    (
        "unknown keys ignored",
        {"_vnd": {"x": 1}, "messages": [{**TEXT, "_vnd": None, "pricing": 1, "conversation": "x"}]},
        [inbound("491234", "m1", 1700000000, "text")],
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in ODD], ids=[c[0] for c in ODD])
def test_odd_input(body: Any, expected: list[Event]) -> None:
    assert parse_notification(body) == expected


@pytest.mark.parametrize(
    ("callback_data", "outbox_id"),
    [
        ("outbox:12", 12),
        ("outbox:1", 1),
        ("outbox:9223372036854775807", 2**63 - 1),
        ("outbox:9223372036854775808", None),
        ("outbox:99999999999999999999999", None),
        ("outbox:x", None),
        ("outbox:", None),
        ("outbox:0", None),
        ("outbox:-1", None),
        ("outbox:012", None),
        ("outbox:12 ", None),
        ("outbox:1.5", None),
        ("Outbox:12", None),
        ("12", None),
        ("some data", None),
        (12, None),
        (None, None),
    ],
)
def test_outbox_id_from_callback_data(callback_data: object, outbox_id: int | None) -> None:
    body = {"statuses": [{**SENT, "biz_opaque_callback_data": callback_data}]}
    [event] = parse_notification(body)
    assert isinstance(event, StatusUpdate)
    assert event.outbox_id == outbox_id


KEYS = st.sampled_from(
    [
        "entry",
        "changes",
        "field",
        "value",
        "messages",
        "statuses",
        "errors",
        "contacts",
        "from",
        "id",
        "timestamp",
        "type",
        "status",
        "recipient_id",
        "message",
        "code",
        "title",
        "details",
        "error_data",
        "biz_opaque_callback_data",
    ]
) | st.text(max_size=3)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["messages", "system", "sent", "failed", "outbox:1", "1700000000", "+1 2"])
)
JSON = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=40,
)


@given(JSON)
def test_never_raises(body: object) -> None:
    events = parse_notification(body)
    assert events
    assert all(
        isinstance(e, Inbound | StatusUpdate | ErrorNotice | NumberChanged | Ignored)
        for e in events
    )


@given(st.dictionaries(KEYS, JSON, max_size=4), st.sampled_from(["flat", "cloud"]))
def test_never_raises_inside_an_envelope(value: dict[str, Any], shape: str) -> None:
    body = (
        cloud(value)
        if shape == "cloud"
        else {"messages": [value], "statuses": [value], "errors": [value]}
    )
    events = parse_notification(body)
    assert events
    assert all(
        isinstance(e, Inbound | StatusUpdate | ErrorNotice | NumberChanged | Ignored)
        for e in events
    )


# --- system messages: a number change is not user activity ---------------------------------

OLD, NEW, CHANGED_AT = "16315558889", "16315558890", 1574080102
SYSTEM: dict[str, Any] = {
    "from": OLD,
    "id": "ABGGFjFVWIifAzNzeXMtMTYzMTU1NTg4ODlA",
    "system": {"body": "User A changed number", "new_wa_id": NEW, "type": "user_changed_number"},
    "timestamp": str(CHANGED_AT),
    "type": "system",
}
CHANGED = NumberChanged(OLD, NEW, at(CHANGED_AT))


def system(**fields: Any) -> dict[str, Any]:
    """SYSTEM with its `system` object's fields replaced (None: removed)."""
    inner = {k: v for k, v in {**SYSTEM["system"], **fields}.items() if v is not None}
    return {**SYSTEM, "system": inner}


def without(message: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != key}


SYSTEM_CASES: list[tuple[str, Any, list[Event]]] = [
    ("onprem, new_wa_id", {"messages": [SYSTEM]}, [CHANGED]),
    ("cloud envelope, new_wa_id", cloud({"messages": [SYSTEM]}), [CHANGED]),
    (
        "wa_id when new_wa_id is absent",
        {"messages": [system(new_wa_id=None, wa_id=NEW)]},
        [CHANGED],
    ),
    ("new_wa_id before wa_id", {"messages": [system(wa_id="491234")]}, [CHANGED]),
    ("empty new_wa_id: wa_id", {"messages": [system(new_wa_id="", wa_id=NEW)]}, [CHANGED]),
    (
        "numbers normalised, integer timestamp",
        {
            "messages": [
                {
                    **system(new_wa_id=" +1 631 555 8890"),
                    "from": "+1631 5558889",
                    "timestamp": CHANGED_AT,
                }
            ]
        },
        [CHANGED],
    ),
    (
        "among other messages, no de-duplication by its id",
        {"messages": [SYSTEM, {**TEXT, "id": SYSTEM["id"]}, SYSTEM]},
        [CHANGED, inbound("491234", SYSTEM["id"], 1700000000, "text"), CHANGED],
    ),
    ("no new number", {"messages": [system(new_wa_id=None)]}, [Ignored("system message")]),
    (
        "new number not digits",
        {"messages": [system(new_wa_id="US.1")]},
        [Ignored("system message")],
    ),
    (
        "new number an int",
        {"messages": [system(new_wa_id=16315558890)]},
        [Ignored("system message")],
    ),
    ("same number", {"messages": [system(new_wa_id=OLD)]}, [Ignored("system message")]),
    (
        "same number once normalised",
        {"messages": [system(new_wa_id="+1 631 555 8889")]},
        [Ignored("system message")],
    ),
    ("no timestamp", {"messages": [without(SYSTEM, "timestamp")]}, [Ignored("system message")]),
    ("bad timestamp", {"messages": [{**SYSTEM, "timestamp": "-1"}]}, [Ignored("system message")]),
    ("no sender", {"messages": [without(SYSTEM, "from")]}, [Ignored("system message")]),
    ("sender not digits", {"messages": [{**SYSTEM, "from": "US.1"}]}, [Ignored("system message")]),
    ("no system object", {"messages": [without(SYSTEM, "system")]}, [Ignored("system message")]),
    (
        "system a string",
        {"messages": [{**SYSTEM, "system": "user_changed_number"}]},
        [Ignored("system message")],
    ),
    (
        "system a list",
        {"messages": [{**SYSTEM, "system": [SYSTEM["system"]]}]},
        [Ignored("system message")],
    ),
    ("system without type", {"messages": [system(type=None)]}, [Ignored("system message")]),
    (
        "identity changed",
        {"messages": [system(type="customer_identity_changed")]},
        [Ignored("system message")],
    ),
    (
        "user identity changed",
        {"messages": [system(type="user_identity_changed", new_wa_id=None)]},
        [Ignored("system message")],
    ),
    (
        "type in capitals",
        {"messages": [system(type="USER_CHANGED_NUMBER")]},
        [Ignored("system message")],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in SYSTEM_CASES], ids=[c[0] for c in SYSTEM_CASES]
)
def test_system_messages(body: Any, expected: list[Event]) -> None:
    assert parse_notification(body) == expected


# --- length caps ---------------------------------------------------------------------------

LONG_ID = "w" * 513
LONG_TEXT = "x" * 2001


def failed(**error: Any) -> dict[str, Any]:
    return {"statuses": [{"id": "w", "status": "failed", "errors": [error]}]}


CAPS: list[tuple[str, Any, list[Event]]] = [
    (
        "status id of 512",
        {"statuses": [{**SENT, "id": "w" * 512}]},
        [status("w" * 512, "sent", 1700000001, "491234")],
    ),
    ("status id of 513", {"statuses": [{**SENT, "id": LONG_ID}]}, [Ignored("status id too long")]),
    (
        "status id too long before stripping",
        {"statuses": [{**SENT, "id": " " + "w" * 512}]},
        [Ignored("status id too long")],
    ),
    (
        "status id of 100000",
        {"statuses": [{**SENT, "id": "w" * 100_000}, SENT]},
        [Ignored("status id too long"), SENT_EVENT],
    ),
    (
        "status value of 32",
        {"statuses": [{**SENT, "status": "S" * 32}]},
        [status("w1", "s" * 32, 1700000001, "491234")],
    ),
    (
        "status value of 33",
        {"statuses": [{**SENT, "status": "s" * 33}]},
        [Ignored("status value too long")],
    ),
    (
        "status value of 32 once stripped",
        {"statuses": [{**SENT, "status": " " * 9 + "s" * 32 + " "}]},
        [status("w1", "s" * 32, 1700000001, "491234")],
    ),
    (
        "error title cut",
        failed(code=1, title=LONG_TEXT),
        [status("w", "failed", None, None, 1, "x" * 2000)],
    ),
    (
        "error title of 2000 kept",
        failed(title="t" * 2000),
        [status("w", "failed", None, None, None, "t" * 2000)],
    ),
    (
        "error_data details cut",
        failed(error_data={"details": LONG_TEXT}),
        [status("w", "failed", None, None, None, None, "x" * 2000)],
    ),
    (
        "error message cut",
        failed(message=LONG_TEXT),
        [status("w", "failed", None, None, None, None, "x" * 2000)],
    ),
    (
        "error details cut",
        failed(details=LONG_TEXT),
        [status("w", "failed", None, None, None, None, "x" * 2000)],
    ),
    (
        "cut after stripping",
        failed(title="  " + "y" * 2000 + "z"),
        [status("w", "failed", None, None, None, "y" * 2000)],
    ),
    (
        "error notice title and detail cut",
        {"errors": [{"code": 5, "title": LONG_TEXT, "message": "m" * 3000}]},
        [ErrorNotice(5, "x" * 2000, "m" * 2000)],
    ),
    (
        "error notice title from a long message",
        {"errors": [{"message": LONG_TEXT}]},
        [ErrorNotice(None, "x" * 2000, "x" * 2000)],
    ),
    (
        "message id of 512 kept",
        {"messages": [{**TEXT, "id": "m" * 512}]},
        [inbound("491234", "m" * 512, 1700000000, "text")],
    ),
    (
        "message id cut",
        {"messages": [{**TEXT, "id": "m" * 600}]},
        [inbound("491234", "m" * 512, 1700000000, "text")],
    ),
    (
        "long message ids still de-duplicated",
        {
            "messages": [
                {**TEXT, "id": "m" * 600},
                {**TEXT, "id": "m" * 600},
                {**TEXT, "id": "m" * 511},
            ]
        },
        [
            inbound("491234", "m" * 512, 1700000000, "text"),
            Ignored("duplicate message"),
            inbound("491234", "m" * 511, 1700000000, "text"),
        ],
    ),
    (
        "long message ids de-duplicated across cloud entries",
        {
            "entry": [
                {
                    "changes": [
                        {"field": "messages", "value": {"messages": [{**TEXT, "id": "m" * 5000}]}}
                    ]
                }
            ]
            * 2
        },
        [inbound("491234", "m" * 512, 1700000000, "text"), Ignored("duplicate message")],
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in CAPS], ids=[c[0] for c in CAPS])
def test_length_caps(body: Any, expected: list[Event]) -> None:
    assert parse_notification(body) == expected


@pytest.mark.parametrize("field", [["messages"], {"messages": 1}, 7, None, True])
def test_a_change_whose_field_is_not_text_is_ignored(field: Any) -> None:
    # Found by the webhook fuzz: a list or an object here raised "unhashable type" in the
    # reconciler, which marked the whole stored body unprocessable.
    body = {"entry": [{"id": "1", "changes": [{"field": field, "value": {"statuses": []}}]}]}
    assert parse_notification(body) == [Ignored("unknown field entry")]
