"""Routing partner- and WABA-level webhook bodies to channels, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from outbox.domain.routing import UNROUTED, Routed, directory, route

KNOWN = directory(
    [
        ("shop-de", "106540352242922", "102290129340398"),
        ("shop-at", "106540352242923", "102290129340398"),
        ("solo", "200000000000001", "300000000000001"),
        ("file-only", None, None),
    ]
)


def _messages(number: str, n: int = 1) -> dict[str, Any]:
    value = {"metadata": {"phone_number_id": number}, "statuses": [{"id": f"wamid.{n}"}]}
    return {"field": "messages", "value": value}


def _account(field: str = "message_template_status_update") -> dict[str, Any]:
    return {"field": field, "value": {"event": "APPROVED"}}


def _body(*entries: tuple[str, list[Any]]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": i, "time": 1, "changes": c} for i, c in entries],
    }


def _channels(parts: list[Routed]) -> list[tuple[str, str | None, int]]:
    return [(p.channel, p.missed, sum(len(e["changes"]) for e in p.body["entry"])) for p in parts]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # a number's change goes to the channel with that phone_number_id
        (_body(("102290129340398", [_messages("106540352242922")])), [("shop-de", None, 1)]),
        # numeric ids are read as their digits
        (_body(("x", [_messages(200000000000001)])), [("solo", None, 1)]),  # type: ignore[arg-type]
        # an account-level change goes to every channel of its WABA
        (
            _body(("102290129340398", [_account()])),
            [("shop-de", None, 1), ("shop-at", None, 1)],
        ),
        (_body(("300000000000001", [_account("account_update")])), [("solo", None, 1)]),
        # an unknown number or WABA: stored unrouted, with the key that missed
        (_body(("102290129340398", [_messages("999")])), [(UNROUTED, "phone_number_id", 1)]),
        (_body(("0", [_account()])), [(UNROUTED, "waba_id", 1)]),
        (_body(("waba-id", [_account()])), [(UNROUTED, "waba_id", 1)]),
        # a messages change without its number, in a WABA with two numbers: no guessing
        (
            _body(("102290129340398", [{"field": "messages", "value": {}}])),
            [(UNROUTED, "phone_number_id", 1)],
        ),
        # ... but with one number, the account's only channel
        (_body(("300000000000001", [{"field": "messages", "value": {}}])), [("solo", None, 1)]),
        # one body, several channels and a miss: each part has only its changes
        (
            _body(
                ("102290129340398", [_messages("106540352242922"), _messages("106540352242923")]),
                ("300000000000001", [_messages("200000000000001"), _messages("1", 2)]),
            ),
            [
                ("shop-de", None, 1),
                ("shop-at", None, 1),
                ("solo", None, 1),
                (UNROUTED, "phone_number_id", 1),
            ],
        ),
    ],
)
def test_route(body: dict[str, Any], expected: list[tuple[str, str | None, int]]) -> None:
    assert _channels(route(body, KNOWN)) == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"entry": []},
        {"entry": "x"},
        {"statuses": [{"id": "x"}]},  # an On-Premise body names no number
        {"event": "channel_created", "channel_id": "abc"},  # a partner lifecycle event
        {"entry": [{"id": "1", "changes": []}]},
    ],
)
def test_bodies_without_a_cloud_envelope_are_one_unrouted_part(body: dict[str, Any]) -> None:
    assert route(body, KNOWN) == [Routed(UNROUTED, body, "shape")]


def test_broken_entries_are_kept_unrouted_beside_the_routed_ones() -> None:
    body = _body(("102290129340398", [_messages("106540352242922")]))
    body["entry"].append("garbage")
    parts = route(body, KNOWN)
    assert [(p.channel, p.missed) for p in parts] == [("shop-de", None), (UNROUTED, "shape")]
    assert parts[1].body["entry"] == ["garbage"]


def test_a_part_keeps_the_entry_and_body_keys() -> None:
    body = _body(("102290129340398", [_messages("106540352242922"), _account()]))
    shop_de = route(body, KNOWN)[0]
    assert shop_de.body["object"] == "whatsapp_business_account"
    entry = shop_de.body["entry"][0]
    assert (entry["id"], entry["time"], len(entry["changes"])) == ("102290129340398", 1, 2)
