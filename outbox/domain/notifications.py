"""Reads one webhook body of either dialect into inbound messages, statuses and error notices.

On-Premise (and Turn.io, vumi) bodies are flat: `messages`, `statuses`, `errors` and `contacts` at
the top level. Cloud bodies wrap the same lists in `entry[].changes[].value` (waba-api.md §4).
The body is untrusted: every part of it may be missing or of the wrong type, and the parser
reports what it skipped as `Ignored` instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outbox.domain import account_events, parsing, pricing
from outbox.domain.account_events import AccountEvent, Unreadable
from outbox.domain.user_ids import (
    Addressed,
    Paired,
    UserIdChanged,
    contact_pairs,
    paired,
    phone_digits,
    system_change,
    user,
)
from outbox.domain.user_ids import (
    NumberChanged as NumberChanged,  # re-exported: defined here before issue 18
)
from outbox.domain.user_ids import user_id_update as _user_id_update_events

_FLAT_KEYS = ("messages", "statuses", "errors", "contacts")
_OUTBOX_ID = re.compile(r"outbox:([1-9][0-9]{0,18})")
_MAX_BIGINT = 2**63 - 1  # outbox.messages.id is a PostgreSQL bigint
# Real message ids are under 100 characters and statuses one word; longer values are not
# WhatsApp's, and would not fit a btree index entry (about 2.7 kB) in the tables they key.
_MAX_ID = 512
_MAX_STATUS = 32
_MAX_TEXT = 2000  # error titles and details are kept, but not without bound


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from a user: it opens or refreshes the 24-hour window.

    `wa_id` is the user's key: their phone number's digits, or their BSUID when the message
    names no phone number (a username user)."""

    wa_id: str
    message_id: str | None
    at: datetime
    kind: str


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One `statuses[]` entry; `status` is the lower-cased raw value, known or not."""

    wamid: str
    status: str
    at: datetime | None
    recipient: str | None
    outbox_id: int | None
    error_code: int | None
    error_title: str | None
    error_detail: str | None
    pricing: pricing.Pricing | None = None  # per-message pricing (issue 18)


@dataclass(frozen=True, slots=True)
class ErrorNotice:
    """An out-of-band error (top-level or `value.errors[]`): log and alert, tied to no row."""

    code: int | None
    title: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A part of the body that has no effect, or that could not be understood."""

    reason: str


Event = (
    Inbound
    | StatusUpdate
    | ErrorNotice
    | NumberChanged
    | Paired
    | UserIdChanged
    | Addressed
    | AccountEvent
    | Ignored
)


def parse_notification(body: object) -> list[Event]:
    """Never raises, whatever `body` is; never returns an empty list.

    Inbound messages are de-duplicated by message id across the whole body, because the same
    message can appear twice in one POST (waba-api.md §4.2).
    """
    if not isinstance(body, dict):
        return [Ignored("not a WhatsApp notification")]
    events: list[Event] = []
    seen: set[str] = set()
    entries = body.get("entry")
    if isinstance(entries, list):
        for entry in entries:
            _entry(entry, events, seen)
    elif any(key in body for key in _FLAT_KEYS):
        _value(body, events, seen)
    else:
        return [Ignored("not a WhatsApp notification")]
    return events or [Ignored("no messages, statuses or errors")]


def _entry(entry: object, events: list[Event], seen: set[str]) -> None:
    if not isinstance(entry, dict):
        events.append(Ignored("entry not an object"))
        return
    changes = entry.get("changes")
    if not isinstance(changes, list):
        events.append(Ignored("entry without changes"))
        return
    for change in changes:
        if not isinstance(change, dict):
            events.append(Ignored("change not an object"))
            continue
        # Any JSON may stand here: a list or an object is not hashable, so never looked up.
        field = change.get("field") if isinstance(change.get("field"), str) else None
        if field in account_events.FIELDS:
            for event in account_events.parse_change(field, change.get("value"), entry):
                events.append(Ignored(event.reason) if isinstance(event, Unreadable) else event)
        elif field not in ("messages", "user_id_update"):
            events.append(Ignored("unknown field entry"))
        elif not isinstance(value := change.get("value"), dict):
            events.append(Ignored("change without value"))
        else:
            _value(value, events, seen)


def _value(value: dict[Any, Any], events: list[Event], seen: set[str]) -> None:
    for key, parse in (
        ("messages", _message),
        ("statuses", _status),
        ("errors", _error_notice),
        ("user_id_update", _user_id_update),
    ):
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            events.append(Ignored(f"{key} not a list"))
            continue
        for item in items:
            for event in parse(item, seen):
                events.append(event)
                if isinstance(event, Inbound) and event.message_id is not None:
                    seen.add(event.message_id)
    events.extend(contact_pairs(value.get("contacts")))


def _message(item: object, seen: set[str]) -> list[Event]:
    if not isinstance(item, dict):
        return [Ignored("message not an object")]
    kind = parsing.text(item.get("type")) or "unknown"
    if kind == "system":
        # A number change or identity notice, written by WhatsApp, not by the user.
        return [_system(item)]
    wa_id, bsuid = user(item.get("from"), item.get("from_user_id"))
    key = wa_id or bsuid
    if key is None:
        return [Ignored("message without sender")]
    pairs = paired(wa_id, bsuid, "inbound")
    at = parsing.unix_time(item.get("timestamp"))
    if at is None:
        return [*pairs, Ignored("message without timestamp")]
    message_id = parsing.text(item.get("id"), _MAX_ID)
    if message_id is not None and message_id in seen:
        return [*pairs, Ignored("duplicate message")]
    return [*pairs, Inbound(key, message_id, at, kind)]


def _system(item: dict[Any, Any]) -> Event:
    change = system_change(item, parsing.unix_time(item.get("timestamp")))
    return Ignored("system message") if change is None else change


def _user_id_update(item: object, _seen: set[str]) -> list[Event]:
    events = _user_id_update_events(item)
    return [Ignored(events)] if isinstance(events, str) else list(events)


def _status(item: object, _seen: set[str]) -> list[Event]:
    if not isinstance(item, dict):
        return [Ignored("status not an object")]
    update = _status_update(item)
    if isinstance(update, Ignored):
        return [update]
    # A status sent to a BSUID may carry no recipient_id at all: the row is found by its id.
    wa_id, bsuid = user(item.get("recipient_id"), item.get("recipient_user_id"))
    if wa_id is None and bsuid is not None:
        return [Addressed(update.wamid, bsuid), update]
    return [*paired(wa_id, bsuid, "status"), update]


def _status_update(item: dict[Any, Any]) -> StatusUpdate | Ignored:
    if isinstance(item.get("id"), str) and len(item["id"]) > _MAX_ID:
        return Ignored("status id too long")
    wamid = parsing.text(item.get("id"))
    if wamid is None:
        return Ignored("status without id")
    status = parsing.text(item.get("status"))
    if status is None:
        return Ignored("status without value")
    if len(status) > _MAX_STATUS:
        return Ignored("status value too long")
    message = item.get("message")
    # `recipient_id` was announced to go away in On-Prem v2.45; Turn sends `message.recipient_id`.
    recipient = phone_digits(item.get("recipient_id"))
    if recipient is None and isinstance(message, dict):
        recipient = phone_digits(message.get("recipient_id"))
    code, title, detail = _first_error(item.get("errors"))
    return StatusUpdate(
        wamid=wamid,
        status=status.lower(),
        at=parsing.unix_time(item.get("timestamp")),
        recipient=recipient,
        outbox_id=_outbox_id(item.get("biz_opaque_callback_data")),
        error_code=code,
        error_title=title,
        error_detail=detail,
        pricing=pricing.parse(item.get("pricing")),
    )


def _error_notice(item: object, _seen: set[str]) -> list[Event]:
    if not isinstance(item, dict):
        return [Ignored("error not an object")]
    code, title, detail = _error_fields(item)
    title = title or parsing.text(item.get("message"), _MAX_TEXT) or "error"
    return [ErrorNotice(code, title, detail)]


def _first_error(errors: object) -> tuple[int | None, str | None, str | None]:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return _error_fields(errors[0])
    return None, None, None


def _error_fields(error: dict[Any, Any]) -> tuple[int | None, str | None, str | None]:
    data = error.get("error_data")
    detail = (
        (parsing.text(data.get("details")) if isinstance(data, dict) else None)
        or parsing.text(error.get("message"))
        or parsing.text(error.get("details"))
    )
    return (
        parsing.error_code(error.get("code")),
        parsing.text(error.get("title"), _MAX_TEXT),
        parsing.text(detail, _MAX_TEXT),
    )


def _outbox_id(value: object) -> int | None:
    if not isinstance(value, str) or not (match := _OUTBOX_ID.fullmatch(value)):
        return None
    number = int(match.group(1))
    return number if number <= _MAX_BIGINT else None
