"""Dispatch: a claimed row becomes the request to send, or a result that needs no request.

A row needs no request when `expires_at` has passed, when it can never be sent as written, or
when the 24-hour window is closed and it has no fallback. Each row is checked once per attempt,
and the checks' normalised recipient and payload type are what the request is built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from outbox.domain.codes import Code, Title
from outbox.domain.models import ClaimedMessage, Dialect, SendResult, SentAs, State
from outbox.domain.outcome import SendError, without_request
from outbox.domain.request import (
    ApiRequest,
    InvalidMessage,
    normalise_recipient,
    render_request,
    validate_payload,
)
from outbox.domain.window import WindowClosed, choose_content


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """What dispatch needs to know of a channel."""

    dialect: Dialect
    namespace: str | None  # the On-Premise template namespace, when templates leave it out


@dataclass(frozen=True, slots=True)
class Unsent:
    """A row settled without a request, and why, as metrics count it."""

    result: SendResult
    error: SendError


def prepare(
    message: ClaimedMessage, rules: ChannelRules, now: datetime, window_margin: timedelta
) -> ApiRequest | Unsent:
    """The request for a claimed row, or the result of a row that must not be sent.

    `window_margin` is taken off the 24-hour window (`window.window_open`).
    """
    if message.expires_at is not None and message.expires_at <= now:
        expired = without_request(message, State.EXPIRED, now, Code.EXPIRED, Title.EXPIRED)
        return Unsent(expired, SendError.EXPIRED)
    try:
        if message.unreadable is not None:
            raise InvalidMessage(Code.INVALID_PAYLOAD, message.unreadable)
        request = _request(message, rules, now, window_margin)
    except InvalidMessage as exc:
        bad = without_request(message, State.FAILED, now, exc.code, Title.INVALID, exc.detail)
        return Unsent(bad, SendError.INVALID)
    if isinstance(request, WindowClosed):
        closed = without_request(
            message, State.FAILED, now, Code.WINDOW_CLOSED, Title.WINDOW_CLOSED, request.detail
        )
        return Unsent(closed, SendError.WINDOW_CLOSED)
    return request


def primary_kind(message: ClaimedMessage, dialect: Dialect) -> str:
    """The type of the row's own payload, which must be sendable as written.

    Rule: a bad primary payload fails the row even when the fallback_template is what would go
    out. A row is checked as the producer wrote it, whatever the window says at this attempt.
    """
    return validate_payload(message.payload, dialect)


def _request(
    message: ClaimedMessage, rules: ChannelRules, now: datetime, window_margin: timedelta
) -> ApiRequest | WindowClosed:
    to = normalise_recipient(message.recipient, rules.dialect)
    kind = primary_kind(message, rules.dialect)
    content = choose_content(
        message.payload,
        message.fallback_template,
        planned=message.planned,
        last_inbound_at=message.last_inbound_at,
        now=now,
        margin=window_margin,
    )
    if isinstance(content, WindowClosed):
        return content
    if content.sent_as is not SentAs.FALLBACK_TEMPLATE:
        return _render(message, rules, to, content.payload, kind, content.sent_as)
    try:
        fallback_kind = validate_payload(content.payload, rules.dialect)
        return _render(message, rules, to, content.payload, fallback_kind, content.sent_as)
    except InvalidMessage as exc:
        raise InvalidMessage(exc.code, f"fallback_template: {exc.detail}") from None


def _render(
    message: ClaimedMessage, rules: ChannelRules, to: str, payload: Any, kind: str, sent_as: SentAs
) -> ApiRequest:
    return render_request(
        rules.dialect,
        to,
        payload,
        kind,
        namespace=rules.namespace,
        message_id=message.id,
        sent_as=sent_as,
    )
