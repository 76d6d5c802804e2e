"""Response bodies in the shapes 360dialog answers with (waba-api.md §2.9, §2.10, §7.3)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiohttp import web

from outbox.sandbox.faults import Fault

if TYPE_CHECKING:  # notifications imports Dialect from here
    from outbox.sandbox.notifications import Webhook

Dialect = Literal["onprem", "cloud"]

# On-Prem Coreapp answers carry this; 2.45.2 is the version the research notes quote.
_META = {"api_status": "stable", "version": "2.45.2"}

# Titles for codes a test is likely to script; others get a generic title.
_TITLES = {
    470: "Message failed to send because more than 24 hours have passed since the customer last "
    "replied to this number",
    471: "Spam rate limit hit",
    480: "User potentially changed",
    1006: "Resource not found",
    1013: "User is not valid",
    1014: "Internal error",
    1015: "Too many requests",
    1026: "Receiver Incapable",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131049: "This message was not delivered to maintain healthy ecosystem engagement",
    131050: "Unable to deliver the message. This recipient has chosen to stop receiving "
    "marketing messages on WhatsApp from your business",
    131057: "Business Account is in maintenance mode",
    130472: "User's number is part of an experiment",
    132015: "Template is Paused",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132001: "Template name does not exist in the translation",
}

# developer_message texts from 360dialog's error list (waba-api.md §3.1).
_GATEWAY_MESSAGES = {
    401: "Invalid api_key",
    500: "Internal error",
    502: "WhatsApp for Business API not available",
    503: "Service temporarily unavailable, too many concurrent requests",
}


@dataclass(frozen=True)
class ApiError:
    """A WhatsApp error, rendered in either dialect's shape."""

    code: int
    title: str
    details: str

    @classmethod
    def scripted(cls, code: int) -> ApiError:
        title = _TITLES.get(code, "Error")
        return cls(code, title, f"{title} (scripted sandbox fault)")


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def new_message_id(dialect: Dialect) -> str:
    # 18 random bytes are 24 url-safe characters: collisions are not a practical concern.
    if dialect == "onprem":
        return "gBEG" + secrets.token_urlsafe(18)
    return "wamid.HBgL" + secrets.token_urlsafe(36)


def accepted_body(
    dialect: Dialect, to: str, message_id: str, contact: Mapping[str, str] | None = None
) -> dict[str, Any]:
    if dialect == "onprem":
        return {"messages": [{"id": message_id}], "meta": _META}
    return {
        "messaging_product": "whatsapp",
        "contacts": [dict(contact) if contact is not None else {"input": to, "wa_id": to}],
        "messages": [{"id": message_id}],
    }


def error_body(dialect: Dialect, error: ApiError) -> dict[str, Any]:
    if dialect == "onprem":
        return {
            "errors": [{"code": error.code, "title": error.title, "details": error.details}],
            "meta": _META,
        }
    return {
        "error": {
            "message": f"(#{error.code}) {error.title}",
            "type": "OAuthException",
            "code": error.code,
            "error_data": {"messaging_product": "whatsapp", "details": error.details},
            "fbtrace_id": "A" + secrets.token_urlsafe(16),
        }
    }


def gateway_body(status: int, message: str | None = None) -> dict[str, Any]:
    """360dialog's own rejection, which never reached WhatsApp; the same in both dialects."""
    developer_message = message or _GATEWAY_MESSAGES.get(status) or HTTPStatus(status).phrase
    return {"meta": {"success": False, "http_code": status, "developer_message": developer_message}}


def status_fault_body(dialect: Dialect, status: int) -> dict[str, Any]:
    if status != 429:
        return gateway_body(status)
    if dialect == "onprem":
        # The Coreapp's 429 carries a title but no code (fixture onprem__send-error__429-no-code).
        return {"errors": [{"title": "Too many requests"}]}
    return error_body(
        dialect,
        ApiError(
            130429,
            _TITLES[130429],
            "Message failed to send because there were too many messages sent from this phone "
            "number in a short period of time",
        ),
    )


def fault_response(dialect: Dialect, fault: Fault) -> web.Response:
    if fault.kind == "error_code":
        return json_response(error_body(dialect, ApiError.scripted(fault.code)), fault.http_status)
    headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    return json_response(status_fault_body(dialect, fault.status), fault.status, headers)


def webhook_body(webhook: Webhook) -> dict[str, Any]:
    return {"url": webhook.url, "headers": dict(webhook.headers)}
