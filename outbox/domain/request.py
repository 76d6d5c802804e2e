"""Turns a dialect-neutral outbox payload into the send request of a channel's API dialect."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from outbox.domain import identity, parsing
from outbox.domain.codes import Code
from outbox.domain.models import Dialect, SentAs

MAX_TEXT_LENGTH = 4096  # characters; longer bodies fail with 1001 on the API
# E.164 allows at most 15 digits; the shortest real numbers have 7 with the country code.
_RECIPIENT = re.compile(r"[0-9]{7,15}")
_DIGITS = re.compile(r"[0-9]+")
# The international call prefix most of the world dials (`0049151…`): no country code starts
# with 0, so a leading `00` is always that prefix, never part of the number.
INTERNATIONAL_PREFIX = "00"
_RECIPIENT_NOISE = re.compile(r"[\s\-().]")
_MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
_TYPES = {
    Dialect.ONPREM: frozenset(
        {"text", "location", "contacts", "interactive", "template", "hsm", *_MEDIA_TYPES}
    ),
    Dialect.CLOUD: frozenset(
        {"text", "location", "contacts", "interactive", "template", "reaction", *_MEDIA_TYPES}
    ),
}
# Fields the daemon owns; a producer who writes them would silently be overridden.
_RESERVED = frozenset({"to", "recipient", "recipient_type"})


class InvalidMessage(ValueError):
    """A producer row that can never be sent as written."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ApiRequest:
    path: str
    body: dict[str, Any]
    sent_as: SentAs


def normalise_recipient(raw: str, dialect: Dialect | None = None) -> str:
    """The user a row goes to: a phone number as digits, or a BSUID as written.

    A phone number loses a leading `+`, spaces, dashes, dots and parentheses. Spaces are every
    `str.isspace` character (the Zs category included). A leading `00` (the international
    prefix, `0049 151…`) is dropped too. What is accepted is then exactly the recipient with
    every character but the ASCII digits removed, less a leading `00`, which is how the `wa_id`
    column (`outbox.recipient_key`, migrations 0015 and 0020) reads it. A recipient spelt as a BSUID
    (`outbox.domain.identity`) is taken as it is, case kept, and only a Cloud channel can send
    to one (`dialect`, when given, is checked).
    """
    if identity.looks_like_bsuid(raw):
        if identity.bsuid(raw) is None:
            raise InvalidMessage(
                Code.INVALID_RECIPIENT,
                f"recipient {raw!r} is not a business-scoped user id "
                "(two letters, a dot, 1-128 letters or digits)",
            )
        if dialect is Dialect.ONPREM:
            raise InvalidMessage(
                Code.INVALID_RECIPIENT,
                f"recipient {raw!r} is a business-scoped user id (BSUID): only Cloud channels "
                "can send to one, this channel is On-Premise",
            )
        return raw
    digits = parsing.phone_number(raw, _DIGITS, _RECIPIENT_NOISE)
    number = None if digits is None else digits.removeprefix(INTERNATIONAL_PREFIX)
    if number is None or not _RECIPIENT.fullmatch(number):
        raise InvalidMessage(
            Code.INVALID_RECIPIENT, f"recipient {raw!r} is not a phone number (7-15 digits)"
        )
    return number


def validate_payload(payload: Any, dialect: Dialect) -> str:
    """Check what the API would reject for certain; return the message type."""
    if not isinstance(payload, dict):
        raise InvalidMessage(Code.INVALID_PAYLOAD, "payload must be a JSON object")
    reserved = sorted(_RESERVED & payload.keys())
    if reserved:
        raise InvalidMessage(
            Code.INVALID_PAYLOAD,
            f"payload must not set {', '.join(reserved)}: the daemon fills it from the row",
        )
    kind = payload.get("type", "text")
    if not isinstance(kind, str) or kind not in _TYPES[dialect]:
        raise InvalidMessage(
            Code.INVALID_PAYLOAD, f"payload type {kind!r} is not supported on {dialect} channels"
        )
    content = payload.get(kind)
    if not isinstance(content, dict) and not (kind == "contacts" and isinstance(content, list)):
        raise InvalidMessage(
            Code.INVALID_PAYLOAD, f"payload type {kind!r} needs an object {kind!r}"
        )
    if kind == "text":
        body = content.get("body") if isinstance(content, dict) else None
        if not isinstance(body, str) or not body:
            raise InvalidMessage(Code.INVALID_PAYLOAD, "text.body must be a non-empty string")
        if len(body) > MAX_TEXT_LENGTH:
            raise InvalidMessage(
                Code.INVALID_PAYLOAD,
                f"text.body has {len(body)} characters, more than {MAX_TEXT_LENGTH}",
            )
    elif kind == "template":
        _validate_template(payload["template"])
    elif kind in _MEDIA_TYPES and ("id" in content) == ("link" in content):
        raise InvalidMessage(Code.INVALID_PAYLOAD, f"{kind} needs exactly one of 'id' or 'link'")
    return str(kind)


def _validate_template(template: dict[str, Any]) -> None:
    if not isinstance(template.get("name"), str) or not template["name"]:
        raise InvalidMessage(Code.INVALID_PAYLOAD, "template.name is required")
    language = template.get("language")
    if (
        not isinstance(language, dict)
        or not isinstance(language.get("code"), str)
        or not language["code"]
    ):
        raise InvalidMessage(Code.INVALID_PAYLOAD, "template.language.code is required")


def build_request(
    dialect: Dialect,
    recipient: str,
    payload: Any,
    *,
    namespace: str | None,
    message_id: int,
    sent_as: SentAs | None = None,
) -> ApiRequest:
    """The request for one message; raises InvalidMessage for rows that cannot be sent."""
    to = normalise_recipient(recipient, dialect)
    kind = validate_payload(payload, dialect)
    return render_request(
        dialect, to, payload, kind, namespace=namespace, message_id=message_id, sent_as=sent_as
    )


def render_request(
    dialect: Dialect,
    to: str,
    payload: Any,
    kind: str,
    *,
    namespace: str | None,
    message_id: int,
    sent_as: SentAs | None = None,
) -> ApiRequest:
    """The request for a recipient already normalised (`to`) and a payload already validated
    (of type `kind`); raises InvalidMessage for what only the dialect or `sent_as` rules out."""
    if sent_as is SentAs.FALLBACK_TEMPLATE and kind not in ("template", "hsm"):
        # It is sent because the window is closed, where only a template may go.
        raise InvalidMessage(Code.INVALID_PAYLOAD, f"must be a template message, not {kind!r}")
    if sent_as is None:
        sent_as = SentAs.TEMPLATE if kind in ("template", "hsm") else SentAs.FREEFORM
    # Copy the top level and the one object we may rewrite; the rest is passed through untouched.
    body: dict[str, Any] = {k: v for k, v in payload.items() if k != "messaging_product"}
    body["type"] = kind
    if isinstance(body[kind], dict):
        body[kind] = dict(body[kind])
    if dialect is Dialect.ONPREM:
        normalise_recipient(to, dialect)  # a BSUID cannot be sent from here
        return ApiRequest("/v1/messages", _onprem(body, kind, to, namespace), sent_as)
    return ApiRequest("/messages", _cloud(body, kind, to, message_id), sent_as)


def _onprem(body: dict[str, Any], kind: str, to: str, namespace: str | None) -> dict[str, Any]:
    if kind == "text" and "preview_url" in body["text"]:
        body["preview_url"] = body["text"].pop("preview_url")
    body.pop("biz_opaque_callback_data", None)
    if kind == "template":
        template = body["template"]
        if not template.get("namespace"):
            if not namespace:
                raise InvalidMessage(
                    Code.INVALID_PAYLOAD,
                    "template has no namespace and the On-Premise channel configures none",
                )
            template["namespace"] = namespace
        # On-Premise accepts only the deterministic language policy (v2.27.8+).
        template["language"] = {**template["language"], "policy": "deterministic"}
    return {"to": to, "recipient_type": "individual", **body}


def _cloud(body: dict[str, Any], kind: str, to: str, message_id: int) -> dict[str, Any]:
    preview = body.pop("preview_url", None)
    if kind == "text" and preview is not None:
        body["text"].setdefault("preview_url", preview)
    if kind == "template":
        template = body["template"]
        template.pop("namespace", None)
        template["language"] = {k: v for k, v in template["language"].items() if k != "policy"}
    # Echoed back in status webhooks: resolves the row even if the send response was lost.
    body["biz_opaque_callback_data"] = f"outbox:{message_id}"
    # A BSUID goes in `recipient`, a phone number in `to` (waba-2026.md §1.9, [M]).
    field = "recipient" if identity.looks_like_bsuid(to) else "to"
    return {"messaging_product": "whatsapp", "recipient_type": "individual", field: to, **body}
