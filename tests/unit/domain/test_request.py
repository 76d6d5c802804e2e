from __future__ import annotations

import copy
from typing import Any

import pytest

from outbox.domain.models import Dialect, SentAs
from outbox.domain.request import (
    MAX_TEXT_LENGTH,
    InvalidMessage,
    build_request,
    normalise_recipient,
    validate_payload,
)

NAMESPACE = "d8bcb6bd_2ab2_439c_9d9e_947501266c77"
RECIPIENT = "+49 151-123 456 78"
DIGITS = "4915112345678"


# --- recipients ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("+49 151-123 456 78", "4915112345678", id="plus-spaces-dashes"),
        pytest.param("4915112345678", "4915112345678", id="digits-only"),
        pytest.param("  +4915112345678\n", "4915112345678", id="surrounding-whitespace"),
        pytest.param("+1 (415) 555.0100", "14155550100", id="parentheses-and-dots"),
        pytest.param("1234567", "1234567", id="seven-digits-shortest"),
        pytest.param("123456789012345", "123456789012345", id="fifteen-digits-longest"),
        # Issue 19 §4: the international prefix `00` is dropped, never sent.
        pytest.param("0049 151 12345678", "4915112345678", id="00-prefix"),
        pytest.param("+0049 151 12345678", "4915112345678", id="plus-and-00"),
        pytest.param("0 0 49 151 12345678", "4915112345678", id="00-spaced"),
        pytest.param("00123456789012345", "123456789012345", id="00-and-fifteen-digits"),
        pytest.param("0001234567", "01234567", id="only-one-00-dropped"),
    ],
)
def test_normalise_recipient_keeps_digits_only(raw: str, expected: str) -> None:
    assert normalise_recipient(raw) == expected
    for dialect in Dialect:
        assert normalise_recipient(raw, dialect) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("49151abc45678", id="letters"),
        pytest.param("+49 151 CALL ME", id="words"),
        pytest.param("123456", id="six-digits-too-short"),
        pytest.param("1234567890123456", id="sixteen-digits-too-long"),
        pytest.param("", id="empty"),
        pytest.param("+", id="plus-only"),
        pytest.param("49+15112345678", id="plus-not-leading"),
        pytest.param("++4915112345678", id="double-plus"),
        pytest.param("4915112345678;1", id="semicolon"),
        pytest.param("0012345", id="00-then-too-short"),
        pytest.param("001234567890123456", id="00-then-too-long"),
        pytest.param("00", id="00-only"),
    ],
)
def test_normalise_recipient_rejects_non_numbers(raw: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        normalise_recipient(raw)
    assert caught.value.code == "invalid_recipient"
    assert repr(raw) in caught.value.detail


def test_build_request_rejects_a_bad_recipient_before_the_payload() -> None:
    with pytest.raises(InvalidMessage) as caught:
        build_request(Dialect.CLOUD, "12", "not an object", namespace=None, message_id=1)
    assert caught.value.code == "invalid_recipient"


# --- dialect mapping ----------------------------------------------------------------------------


def test_onprem_text_request() -> None:
    payload = {"type": "text", "text": {"body": "Hallo", "preview_url": True}}
    request = build_request(Dialect.ONPREM, RECIPIENT, payload, namespace=NAMESPACE, message_id=17)
    assert request.path == "/v1/messages"
    assert request.sent_as is SentAs.FREEFORM
    assert request.body == {
        "to": DIGITS,
        "recipient_type": "individual",
        "type": "text",
        "text": {"body": "Hallo"},
        "preview_url": True,
    }


def test_cloud_text_request() -> None:
    payload = {"type": "text", "text": {"body": "Hallo", "preview_url": True}}
    request = build_request(Dialect.CLOUD, RECIPIENT, payload, namespace=None, message_id=17)
    assert request.path == "/messages"
    assert request.sent_as is SentAs.FREEFORM
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": DIGITS,
        "type": "text",
        "text": {"body": "Hallo", "preview_url": True},
        "biz_opaque_callback_data": "outbox:17",
    }


def test_cloud_moves_a_top_level_preview_url_into_text() -> None:
    payload = {"type": "text", "text": {"body": "see https://x.example"}, "preview_url": True}
    body = build_request(Dialect.CLOUD, DIGITS, payload, namespace=None, message_id=1).body
    assert "preview_url" not in body
    assert body["text"] == {"body": "see https://x.example", "preview_url": True}


def test_cloud_prefers_text_preview_url_over_the_top_level_one() -> None:
    payload = {"type": "text", "text": {"body": "b", "preview_url": False}, "preview_url": True}
    body = build_request(Dialect.CLOUD, DIGITS, payload, namespace=None, message_id=1).body
    assert "preview_url" not in body
    assert body["text"]["preview_url"] is False


def test_onprem_keeps_a_top_level_preview_url() -> None:
    payload = {"type": "text", "text": {"body": "b"}, "preview_url": True}
    body = build_request(Dialect.ONPREM, DIGITS, payload, namespace=None, message_id=1).body
    assert body["preview_url"] is True
    assert body["text"] == {"body": "b"}


def test_type_defaults_to_text_and_is_written_out() -> None:
    payload = {"text": {"body": "no type given"}}
    assert validate_payload(payload, Dialect.CLOUD) == "text"
    for dialect in Dialect:
        body = build_request(dialect, DIGITS, payload, namespace=None, message_id=1).body
        assert body["type"] == "text"


def test_onprem_template_gets_channel_namespace_and_deterministic_policy() -> None:
    payload = {
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "de"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
        },
    }
    request = build_request(Dialect.ONPREM, DIGITS, payload, namespace=NAMESPACE, message_id=5)
    assert request.path == "/v1/messages"
    assert request.sent_as is SentAs.TEMPLATE
    assert request.body == {
        "to": DIGITS,
        "recipient_type": "individual",
        "type": "template",
        "template": {
            "name": "order_update",
            "namespace": NAMESPACE,
            "language": {"policy": "deterministic", "code": "de"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
        },
    }


def test_onprem_template_keeps_its_own_namespace() -> None:
    payload = {
        "type": "template",
        "template": {"name": "t", "namespace": "own_ns", "language": {"code": "en"}},
    }
    body = build_request(Dialect.ONPREM, DIGITS, payload, namespace=NAMESPACE, message_id=1).body
    assert body["template"]["namespace"] == "own_ns"


@pytest.mark.parametrize(
    "template",
    [
        pytest.param({"name": "t", "language": {"code": "en"}}, id="namespace-absent"),
        pytest.param({"name": "t", "namespace": "", "language": {"code": "en"}}, id="empty"),
        pytest.param({"name": "t", "namespace": None, "language": {"code": "en"}}, id="null"),
    ],
)
@pytest.mark.parametrize("channel_namespace", [None, ""], ids=["channel-none", "channel-empty"])
def test_onprem_template_without_any_namespace_is_invalid(
    template: dict[str, Any], channel_namespace: str | None
) -> None:
    payload = {"type": "template", "template": template}
    with pytest.raises(InvalidMessage) as caught:
        build_request(Dialect.ONPREM, DIGITS, payload, namespace=channel_namespace, message_id=1)
    assert caught.value.code == "invalid_payload"
    assert "namespace" in caught.value.detail


def test_cloud_template_drops_namespace_and_policy() -> None:
    payload = {
        "type": "template",
        "template": {
            "name": "order_update",
            "namespace": NAMESPACE,
            "language": {"policy": "deterministic", "code": "de"},
        },
    }
    request = build_request(Dialect.CLOUD, DIGITS, payload, namespace=NAMESPACE, message_id=9)
    assert request.path == "/messages"
    assert request.sent_as is SentAs.TEMPLATE
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": DIGITS,
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "de"}},
        "biz_opaque_callback_data": "outbox:9",
    }


def test_onprem_drops_cloud_only_fields() -> None:
    payload = {
        "messaging_product": "whatsapp",
        "biz_opaque_callback_data": "mine",
        "type": "text",
        "text": {"body": "b"},
    }
    body = build_request(Dialect.ONPREM, DIGITS, payload, namespace=None, message_id=3).body
    assert "messaging_product" not in body
    assert "biz_opaque_callback_data" not in body


def test_cloud_overrides_producer_callback_data_with_the_row_id() -> None:
    payload = {"biz_opaque_callback_data": "mine", "type": "text", "text": {"body": "b"}}
    body = build_request(Dialect.CLOUD, DIGITS, payload, namespace=None, message_id=123).body
    assert body["biz_opaque_callback_data"] == "outbox:123"
    assert body["messaging_product"] == "whatsapp"


@pytest.mark.parametrize(
    ("dialect", "payload", "expected"),
    [
        pytest.param(
            Dialect.CLOUD, {"type": "text", "text": {"body": "b"}}, SentAs.FREEFORM, id="text"
        ),
        pytest.param(
            Dialect.CLOUD,
            {"type": "image", "image": {"link": "https://x.example/a.png"}},
            SentAs.FREEFORM,
            id="image",
        ),
        pytest.param(
            Dialect.CLOUD,
            {"type": "template", "template": {"name": "t", "language": {"code": "en"}}},
            SentAs.TEMPLATE,
            id="cloud-template",
        ),
        pytest.param(
            Dialect.ONPREM,
            {"type": "hsm", "hsm": {"namespace": "n", "element_name": "e"}},
            SentAs.TEMPLATE,
            id="onprem-hsm",
        ),
    ],
)
def test_sent_as_follows_the_message_type(
    dialect: Dialect, payload: dict[str, Any], expected: SentAs
) -> None:
    request = build_request(dialect, DIGITS, payload, namespace="ns", message_id=1)
    assert request.sent_as is expected


def test_explicit_sent_as_wins() -> None:
    payload = {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}
    request = build_request(
        Dialect.CLOUD,
        DIGITS,
        payload,
        namespace=None,
        message_id=1,
        sent_as=SentAs.FALLBACK_TEMPLATE,
    )
    assert request.sent_as is SentAs.FALLBACK_TEMPLATE


def test_contacts_list_is_passed_through() -> None:
    contacts = [{"name": {"formatted_name": "Ada", "first_name": "Ada"}}]
    payload = {"type": "contacts", "contacts": contacts}
    for dialect in Dialect:
        body = build_request(dialect, DIGITS, payload, namespace=None, message_id=1).body
        assert body["contacts"] == contacts


# --- the input is never mutated -----------------------------------------------------------------

_PAYLOADS: list[Any] = [
    pytest.param(
        {"type": "text", "text": {"body": "b", "preview_url": True}, "preview_url": False},
        id="text-both-preview-urls",
    ),
    pytest.param({"type": "text", "text": {"body": "b"}, "preview_url": True}, id="text-top"),
    pytest.param(
        {
            "messaging_product": "whatsapp",
            "biz_opaque_callback_data": "x",
            "type": "text",
            "text": {"body": "b"},
        },
        id="text-cloud-fields",
    ),
    pytest.param(
        {
            "type": "template",
            "template": {
                "name": "t",
                "language": {"code": "en", "policy": "deterministic"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "1"}]}],
            },
        },
        id="template-no-namespace",
    ),
    pytest.param(
        {
            "type": "template",
            "template": {"name": "t", "namespace": "own", "language": {"code": "en"}},
        },
        id="template-with-namespace",
    ),
    pytest.param(
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ada"}}]}, id="contacts"
    ),
    pytest.param({"type": "document", "document": {"id": "123", "caption": "c"}}, id="doc"),
]


@pytest.mark.parametrize("payload", _PAYLOADS)
@pytest.mark.parametrize("dialect", list(Dialect), ids=str)
def test_build_request_never_mutates_the_payload(dialect: Dialect, payload: Any) -> None:
    before = copy.deepcopy(payload)
    build_request(dialect, DIGITS, payload, namespace=NAMESPACE, message_id=1)
    assert payload == before


def test_building_twice_gives_the_same_request() -> None:
    payload = {"type": "text", "text": {"body": "b", "preview_url": True}}
    first = build_request(Dialect.ONPREM, DIGITS, payload, namespace=None, message_id=1)
    second = build_request(Dialect.ONPREM, DIGITS, payload, namespace=None, message_id=1)
    assert first == second
    assert first.body["preview_url"] is True


# --- validation ---------------------------------------------------------------------------------

_INVALID: list[Any] = [
    pytest.param(["text"], Dialect.CLOUD, "JSON object", id="list-not-object"),
    pytest.param("hello", Dialect.ONPREM, "JSON object", id="string-not-object"),
    pytest.param(None, Dialect.CLOUD, "JSON object", id="null-not-object"),
    pytest.param({"to": "49151", "text": {"body": "b"}}, Dialect.CLOUD, "to", id="reserved-to"),
    pytest.param(
        {"recipient_type": "group", "text": {"body": "b"}},
        Dialect.ONPREM,
        "recipient_type",
        id="reserved-recipient-type",
    ),
    pytest.param({"type": "hsm", "hsm": {}}, Dialect.CLOUD, "'hsm'", id="hsm-on-cloud"),
    pytest.param(
        {"type": "reaction", "reaction": {"message_id": "x", "emoji": "+"}},
        Dialect.ONPREM,
        "'reaction'",
        id="reaction-on-onprem",
    ),
    pytest.param({"type": "carousel", "carousel": {}}, Dialect.CLOUD, "'carousel'", id="unknown"),
    pytest.param({"type": None}, Dialect.CLOUD, "None", id="type-null"),
    pytest.param({"type": "image"}, Dialect.CLOUD, "'image'", id="missing-image-object"),
    pytest.param({"type": "text"}, Dialect.ONPREM, "'text'", id="missing-text-object"),
    pytest.param({"type": "text", "text": "b"}, Dialect.CLOUD, "'text'", id="text-not-object"),
    pytest.param(
        {"type": "location", "location": [1, 2]}, Dialect.ONPREM, "'location'", id="location-list"
    ),
    pytest.param(
        {"type": "contacts", "contacts": "Ada"}, Dialect.CLOUD, "'contacts'", id="contacts-string"
    ),
    pytest.param({"text": {}}, Dialect.CLOUD, "text.body", id="text-without-body"),
    pytest.param({"text": {"body": ""}}, Dialect.ONPREM, "text.body", id="text-empty-body"),
    pytest.param({"text": {"body": 42}}, Dialect.CLOUD, "text.body", id="text-body-number"),
    pytest.param(
        {"text": {"body": "x" * (MAX_TEXT_LENGTH + 1)}},
        Dialect.CLOUD,
        "4097 characters",
        id="text-4097",
    ),
    pytest.param(
        {"type": "template", "template": {"language": {"code": "en"}}},
        Dialect.CLOUD,
        "template.name",
        id="template-no-name",
    ),
    pytest.param(
        {"type": "template", "template": {"name": "", "language": {"code": "en"}}},
        Dialect.ONPREM,
        "template.name",
        id="template-empty-name",
    ),
    pytest.param(
        {"type": "template", "template": {"name": "t"}},
        Dialect.CLOUD,
        "template.language.code",
        id="template-no-language",
    ),
    pytest.param(
        {"type": "template", "template": {"name": "t", "language": {"policy": "deterministic"}}},
        Dialect.ONPREM,
        "template.language.code",
        id="template-no-language-code",
    ),
    pytest.param(
        {"type": "template", "template": {"name": "t", "language": "en"}},
        Dialect.CLOUD,
        "template.language.code",
        id="template-language-string",
    ),
    pytest.param(
        {"type": "image", "image": {"id": "1", "link": "https://x.example/a.png"}},
        Dialect.CLOUD,
        "exactly one of 'id' or 'link'",
        id="image-id-and-link",
    ),
    pytest.param(
        {"type": "document", "document": {"caption": "c"}},
        Dialect.ONPREM,
        "exactly one of 'id' or 'link'",
        id="document-neither",
    ),
    pytest.param(
        {"type": "sticker", "sticker": {}},
        Dialect.CLOUD,
        "exactly one of 'id' or 'link'",
        id="sticker-empty",
    ),
]


@pytest.mark.parametrize(("payload", "dialect", "fragment"), _INVALID)
def test_invalid_payloads_are_rejected_with_a_reason(
    payload: Any, dialect: Dialect, fragment: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        validate_payload(payload, dialect)
    assert caught.value.code == "invalid_payload"
    assert fragment in caught.value.detail
    assert str(caught.value) == caught.value.detail


@pytest.mark.parametrize(("payload", "dialect", "fragment"), _INVALID)
def test_build_request_rejects_invalid_payloads(
    payload: Any, dialect: Dialect, fragment: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        build_request(dialect, DIGITS, payload, namespace=NAMESPACE, message_id=1)
    assert caught.value.code == "invalid_payload"
    assert fragment in caught.value.detail


@pytest.mark.parametrize(
    "kind",
    [pytest.param(["text"], id="list"), pytest.param({"text": 1}, id="object")],
)
def test_a_non_string_type_is_an_invalid_message_not_a_crash(kind: Any) -> None:
    # A producer can write any JSON into `type`; the sender only handles InvalidMessage.
    payload = {"type": kind, "text": {"body": "b"}}
    with pytest.raises(InvalidMessage) as caught:
        build_request(Dialect.CLOUD, DIGITS, payload, namespace=NAMESPACE, message_id=1)
    assert caught.value.code == "invalid_payload"


def test_both_reserved_fields_are_named() -> None:
    with pytest.raises(InvalidMessage) as caught:
        validate_payload({"to": "1", "recipient_type": "individual"}, Dialect.CLOUD)
    assert "recipient_type, to" in caught.value.detail


@pytest.mark.parametrize(
    ("payload", "dialect", "kind"),
    [
        pytest.param(
            {"text": {"body": "x" * MAX_TEXT_LENGTH}}, Dialect.CLOUD, "text", id="text-4096"
        ),
        pytest.param({"text": {"body": "ü"}}, Dialect.ONPREM, "text", id="text-one-char"),
        pytest.param(
            {"type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "+"}},
            Dialect.CLOUD,
            "reaction",
            id="reaction-on-cloud",
        ),
        pytest.param(
            {"type": "hsm", "hsm": {"namespace": "n", "element_name": "e"}},
            Dialect.ONPREM,
            "hsm",
            id="hsm-on-onprem",
        ),
        pytest.param(
            {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ada"}}]},
            Dialect.ONPREM,
            "contacts",
            id="contacts-list",
        ),
        pytest.param(
            {"type": "location", "location": {"latitude": 52.5, "longitude": 13.4}},
            Dialect.CLOUD,
            "location",
            id="location",
        ),
        pytest.param(
            {"type": "interactive", "interactive": {"type": "button"}},
            Dialect.ONPREM,
            "interactive",
            id="interactive",
        ),
        pytest.param(
            {"type": "template", "template": {"name": "t", "language": {"code": "en"}}},
            Dialect.ONPREM,
            "template",
            id="template",
        ),
    ],
)
def test_valid_payloads_return_their_type(payload: Any, dialect: Dialect, kind: str) -> None:
    assert validate_payload(payload, dialect) == kind


@pytest.mark.parametrize("media", ["image", "audio", "video", "document", "sticker"])
@pytest.mark.parametrize(
    "ref", [{"id": "1234"}, {"link": "https://x.example/f"}], ids=["id", "link"]
)
@pytest.mark.parametrize("dialect", list(Dialect), ids=str)
def test_media_with_exactly_one_reference_is_valid(
    media: str, ref: dict[str, str], dialect: Dialect
) -> None:
    payload = {"type": media, media: dict(ref)}
    assert validate_payload(payload, dialect) == media
    body = build_request(dialect, DIGITS, payload, namespace=None, message_id=1).body
    assert body[media] == ref


def test_onprem_forces_the_deterministic_policy_over_the_producers() -> None:
    payload = {
        "type": "template",
        "template": {"name": "otp", "language": {"code": "en", "policy": "fallback"}},
    }
    request = build_request(Dialect.ONPREM, DIGITS, payload, namespace=NAMESPACE, message_id=1)
    assert request.body["template"]["language"] == {"code": "en", "policy": "deterministic"}


@pytest.mark.parametrize("dialect", list(Dialect))
def test_template_with_empty_language_code_is_invalid(dialect: Dialect) -> None:
    payload = {"type": "template", "template": {"name": "otp", "language": {"code": ""}}}
    with pytest.raises(InvalidMessage, match=r"language\.code"):
        build_request(dialect, DIGITS, payload, namespace=NAMESPACE, message_id=1)


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize(
    ("payload", "accepted"),
    [
        ({"type": "template", "template": {"name": "t", "language": {"code": "en"}}}, True),
        ({"type": "text", "text": {"body": "not a template"}}, False),
        ({"text": {"body": "type defaults to text"}}, False),
    ],
)
def test_a_fallback_must_be_a_template(dialect: Dialect, payload: Any, accepted: bool) -> None:
    def build() -> Any:
        return build_request(
            dialect,
            "4915100000001",
            payload,
            namespace="ns",
            message_id=1,
            sent_as=SentAs.FALLBACK_TEMPLATE,
        )

    if accepted:
        assert build().sent_as is SentAs.FALLBACK_TEMPLATE
    else:
        with pytest.raises(InvalidMessage, match="must be a template message"):
            build()
