"""Reads a send response of either dialect into an acceptance or a rejection.

Three error shapes exist (waba-api.md §2.10): the On-Premise `errors[]`, the Cloud `error{}`, and
360dialog's gateway `meta{success: false}` (spelt camelCase or snake_case). A 2xx that carries
errors or no message id is a rejection too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from outbox.domain import identity, parsing

# Everything taken from an answer is cleaned (`parsing.storable`) and capped here, where it
# enters, so that no answer can make the result's UPDATE fail or bloat rows and logs.
TITLE_LIMIT = 200  # characters of an error title
DETAIL_LIMIT = 500  # characters of error details, or of a body that was not JSON
# Bytes of an answer the client reads: real answers are a few hundred bytes. A larger one is
# judged on what was read, like a garbled one, and never buffered whole.
ANSWER_LIMIT = 1024 * 1024
# Message ids are opaque, but every real one is a few dozen printable ASCII characters
# (`wamid.HBgL...` on Cloud, `gBEGkYiEB1VXAglK1ZEqA1YKPrU` On-Premise, waba-api.md).
_WAMID = re.compile(r"[!-~]{1,200}")
# The first message's id in a body the parsers refused (nested past their depth, cut short, over
# ANSWER_LIMIT): `"messages": [{ ... "id": "..."` with nothing nested before the id.
_MESSAGE_ID = re.compile(
    r'"messages"\s*:\s*\[\s*\{'  # the first message object ...
    r'[^{}\[\]"]*(?:"[^"\\]*"[^{}\[\]"]*)*?'  # ... plain keys and values before its id ...
    r'"id"\s*:\s*"((?:[^"\\]|\\.){1,400})"'  # ... and the id, escapes kept for the decoder
)


# The send answer's `messages[].message_status` (Cloud, template pacing; waba-2026.md §1.2).
MESSAGE_STATUSES = frozenset({"accepted", "held_for_quality_assessment", "paused"})


@dataclass(frozen=True, slots=True)
class Accepted:
    wamid: str
    wa_id: str | None
    # The user's BSUID, when the answer names one (`contacts[].user_id`, since 2026).
    user_id: str | None = None
    # One of MESSAGE_STATUSES, or None when absent or not one of them (it is counted, never
    # stored as given).
    message_status: str | None = None


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


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A 2xx whose body could not be read and names no message id that can be found: the API
    took the request, so the message may be on its way. Never retried as if nothing happened."""

    http_status: int
    reason: str


SendOutcome = Accepted | Rejected | TransportFailure | Unreadable


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
    http_status: int, body: Any, retry_after: float | None = None, *, cut: bool = False
) -> Accepted | Rejected | Unreadable:
    """`body` is the decoded JSON, or the raw text when it was not JSON; `cut`: the answer was
    larger than ANSWER_LIMIT and `body` is the text of what was read."""
    if cut or not isinstance(body, dict):
        text = body if isinstance(body, str) else repr(body)
        if 200 <= http_status < 300:
            return _unreadable_success(http_status, text, cut)
        detail = parsing.storable(text, DETAIL_LIMIT) or None
        if cut:
            detail = f"over 1 MiB, cut: {parsing.storable(text, DETAIL_LIMIT - 40)}"
        return Rejected(http_status, None, f"HTTP {http_status}", detail, retry_after)
    error = _error_of(body)
    if error is None and 200 <= http_status < 300:
        accepted = _accepted(body)
        if isinstance(accepted, Accepted):
            return accepted
        if accepted is not None:
            # Stored as given it could break the result's UPDATE (too long for the wamid
            # index, a NUL); taken as no id, the row is retried like any 2xx without one.
            detail = f"{len(accepted):,} characters: {parsing.storable(accepted, 80)!r}"
            return Rejected(
                http_status, None, "response message id is not usable", detail, retry_after
            )
        return Rejected(http_status, None, "response has no message id", None, retry_after)
    code, title, detail = error or (None, f"HTTP {http_status}", None)
    return Rejected(http_status, code, title, detail, retry_after)


def _unreadable_success(http_status: int, text: str, cut: bool) -> Accepted | Unreadable:
    """A 2xx the parsers could not take: its message id if the text names a usable one."""
    found = _MESSAGE_ID.search(text)
    if found is not None:
        try:
            wamid = json.loads(f'"{found[1]}"')
        except ValueError:
            wamid = None
        if isinstance(wamid, str) and _WAMID.fullmatch(wamid):
            return Accepted(wamid, None)
    why = "over 1 MiB" if cut else "not a JSON object the parsers could read"
    return Unreadable(http_status, f"{why}: {parsing.storable(text, 200)!r}")


def _accepted(body: dict[str, Any]) -> Accepted | str | None:
    """The acceptance; the message id alone when it is not usable; None without one."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    wamid = messages[0].get("id")
    if not isinstance(wamid, str) or not wamid:
        return None
    if not _WAMID.fullmatch(wamid):
        return wamid
    wa_id = user_id = None
    contacts = body.get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        wa_id = parsing.text(contacts[0].get("wa_id"), 64)
        wa_id = parsing.storable(wa_id, 64) if wa_id else None
        user_id = identity.bsuid(contacts[0].get("user_id"))
    status = messages[0].get("message_status")
    return Accepted(wamid, wa_id, user_id, status if status in MESSAGE_STATUSES else None)


def _error_of(body: dict[str, Any]) -> tuple[int | None, str, str | None] | None:
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return (
            parsing.error_code(first.get("code")),
            _str(first.get("title"), TITLE_LIMIT) or "error",
            _str(first.get("details"), DETAIL_LIMIT) or _str(first.get("detail"), DETAIL_LIMIT),
        )
    error = body.get("error")
    if isinstance(error, dict):
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        return (
            parsing.error_code(error.get("code")),
            _str(error.get("message"), TITLE_LIMIT)
            or _str(error.get("type"), TITLE_LIMIT)
            or "error",
            _str(details, DETAIL_LIMIT),
        )
    meta = body.get("meta")
    if isinstance(meta, dict) and meta.get("success") is False:
        message = _str(meta.get("developerMessage"), TITLE_LIMIT) or _str(
            meta.get("developer_message"), TITLE_LIMIT
        )
        return None, message or "request rejected by 360dialog", None
    return None


def _str(value: Any, limit: int) -> str | None:
    # The API's own words are kept as it sent them, surrounding spaces included: only what no
    # text column can hold goes, and what is over `limit`.
    return parsing.storable(value, limit) or None if isinstance(value, str) else None
