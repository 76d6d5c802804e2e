"""Recipients that are business-scoped user ids (issue 18 §1): reading them, and the request
each dialect gets (or refuses) for one."""

from __future__ import annotations

from typing import Any

import pytest

from outbox.domain.codes import Code
from outbox.domain.identity import bsuid, looks_like_bsuid
from outbox.domain.models import Dialect, SentAs
from outbox.domain.request import ApiRequest, InvalidMessage, build_request, normalise_recipient
from outbox.domain.response import Accepted, parse_send_response

TEXT = {"type": "text", "text": {"body": "hi"}}
MAX = "US." + "a1" * 64  # 128 alphanumerics

KEYS = [
    # (recipient, its key): a BSUID is kept as written, case and all.
    ("US.13491208655302741918", "US.13491208655302741918"),
    ("us.abcDEF123", "us.abcDEF123"),
    ("DE.X", "DE.X"),
    (MAX, MAX),
    ("+49 151 1234 5678", "4915112345678"),
    ("4915112345678", "4915112345678"),
]


@pytest.mark.parametrize(("recipient", "key"), KEYS)
def test_recipient_key(recipient: str, key: str) -> None:
    assert normalise_recipient(recipient) == key
    assert normalise_recipient(recipient, Dialect.CLOUD) == key


INVALID = [
    # Spelt as a BSUID, so never read as a phone number (its digits are not one).
    ("US.", "not a business-scoped user id"),
    ("US.12-34", "not a business-scoped user id"),
    ("US.ENT.506847293015824", "not a business-scoped user id"),  # a parent names no one user
    (MAX + "b", "not a business-scoped user id"),
    ("US.1 2", "not a business-scoped user id"),
    (" US.1234", "not a phone number"),
    ("USA.1234", "not a phone number"),
    ("U1.1234", "not a phone number"),
]


@pytest.mark.parametrize(("recipient", "detail"), INVALID)
def test_invalid_bsuid_spellings(recipient: str, detail: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        normalise_recipient(recipient)
    assert caught.value.code == Code.INVALID_RECIPIENT
    assert detail in caught.value.detail


def test_an_onprem_channel_cannot_address_a_bsuid() -> None:
    with pytest.raises(InvalidMessage) as caught:
        build_request(Dialect.ONPREM, "US.1234", TEXT, namespace="ns", message_id=7)
    assert caught.value.code == Code.INVALID_RECIPIENT
    assert caught.value.detail == (
        "recipient 'US.1234' is a business-scoped user id (BSUID): only Cloud channels can send "
        "to one, this channel is On-Premise"
    )


@pytest.mark.parametrize(
    ("recipient", "field"), [("US.1234", "recipient"), ("4915112345678", "to")]
)
def test_a_cloud_request_names_a_bsuid_in_recipient_and_a_number_in_to(
    recipient: str, field: str
) -> None:
    request = build_request(Dialect.CLOUD, recipient, TEXT, namespace=None, message_id=7)
    assert request == ApiRequest(
        "/messages",
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            field: recipient,
            "type": "text",
            "text": {"body": "hi"},
            "biz_opaque_callback_data": "outbox:7",
        },
        SentAs.FREEFORM,
    )


def test_a_payload_may_not_set_recipient() -> None:
    with pytest.raises(InvalidMessage, match="must not set recipient"):
        build_request(
            Dialect.CLOUD, "US.1", {**TEXT, "recipient": "US.2"}, namespace=None, message_id=1
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("US.1234", "US.1234"),
        ("US.ENT.1", None),
        ("US1234", None),
        (1234, None),
        (None, None),
        ("US.1234\n", None),
    ],
)
def test_bsuid_from_untrusted_json(value: Any, expected: str | None) -> None:
    assert bsuid(value) == expected
    assert looks_like_bsuid("US.x")
    assert not looks_like_bsuid("+1 555")


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        ({"input": "US.1", "user_id": "US.1"}, Accepted("w", None, "US.1")),
        ({"input": "49151", "wa_id": "49151", "user_id": "US.1"}, Accepted("w", "49151", "US.1")),
        ({"input": "49151", "wa_id": "49151", "user_id": "US.ENT.1"}, Accepted("w", "49151")),
        ({"input": "49151", "user_id": 5}, Accepted("w", None)),
    ],
)
def test_send_answers_name_the_bsuid(contact: dict[str, Any], expected: Accepted) -> None:
    body = {"contacts": [contact], "messages": [{"id": "w"}]}
    assert parse_send_response(200, body) == expected
