"""Reads a send response of either dialect into an acceptance or a rejection.

Three error shapes exist (waba-api.md §2.10): the On-Premise `errors[]`, the Cloud `error{}`, and
360dialog's gateway `meta{success: false}` (spelt camelCase or snake_case). A 2xx that carries
errors or no message id is a rejection too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from outbox.domain import parsing

_DETAIL_LIMIT = 500  # characters of a non-JSON body kept for the operator


@dataclass(frozen=True, slots=True)
class Accepted:
    wamid: str
    wa_id: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    http_status: int
    code: int | None
    title: str
    detail: str | None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No HTTP answer. `ambiguous`: the request may have reached the API."""

    ambiguous: bool
    reason: str


SendOutcome = Accepted | Rejected | TransportFailure


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header; HTTP dates are ignored (never seen from this API)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_send_response(
    http_status: int, body: Any, retry_after: float | None = None
) -> Accepted | Rejected:
    """`body` is the decoded JSON, or the raw text when it was not JSON."""
    if not isinstance(body, dict):
        text = body if isinstance(body, str) else repr(body)
        return Rejected(
            http_status, None, f"HTTP {http_status}", text[:_DETAIL_LIMIT] or None, retry_after
        )
    error = _error_of(body)
    if error is None and 200 <= http_status < 300:
        accepted = _accepted(body)
        if accepted is not None:
            return accepted
        return Rejected(http_status, None, "response has no message id", None, retry_after)
    code, title, detail = error or (None, f"HTTP {http_status}", None)
    return Rejected(http_status, code, title, detail, retry_after)


def _accepted(body: dict[str, Any]) -> Accepted | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    wamid = messages[0].get("id")
    if not isinstance(wamid, str) or not wamid:
        return None
    wa_id = None
    contacts = body.get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        found = contacts[0].get("wa_id")
        wa_id = found.strip() if isinstance(found, str) else None
    return Accepted(wamid, wa_id)


def _error_of(body: dict[str, Any]) -> tuple[int | None, str, str | None] | None:
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return (
            parsing.error_code(first.get("code")),
            _str(first.get("title")) or "error",
            _str(first.get("details")) or _str(first.get("detail")),
        )
    error = body.get("error")
    if isinstance(error, dict):
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        return (
            parsing.error_code(error.get("code")),
            _str(error.get("message")) or _str(error.get("type")) or "error",
            _str(details),
        )
    meta = body.get("meta")
    if isinstance(meta, dict) and meta.get("success") is False:
        message = _str(meta.get("developerMessage")) or _str(meta.get("developer_message"))
        return None, message or "request rejected by 360dialog", None
    return None


def _str(value: Any) -> str | None:
    # The API's own words are kept as it sent them, surrounding spaces included.
    return parsing.text(value, strip=False)
