"""Turns what happened to one send into the row's next state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from outbox.domain import retry, window
from outbox.domain.codes import Code
from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.response import Accepted, SendOutcome, TransportFailure

WINDOW_CLOSED = "window_closed"
WINDOW_CLOSED_TITLE = "the 24-hour window is closed and the row has no fallback_template"
EXPIRED_TITLE = "expires_at passed before the message was sent"


def without_request(
    message: ClaimedMessage,
    state: State,
    now: datetime,
    code: str,
    title: str,
    detail: str | None = None,
) -> SendResult:
    """A row settled before any request left: the attempt taken at claim time is given back."""
    return SendResult(
        message.id,
        state,
        now,
        error_code=code,
        error_title=title,
        error_detail=detail,
        attempts_delta=-1,
    )


@dataclass(frozen=True, slots=True)
class Judged:
    result: SendResult
    error: retry.ErrorClass | None  # None when accepted
    retry_after: float | None = None  # the API's Retry-After, for throttles


def judge(
    message: ClaimedMessage,
    sent_as: SentAs,
    outcome: SendOutcome,
    *,
    now: datetime,
    policy: retry.RetryPolicy,
    rand: Callable[[], float],
) -> Judged:
    if isinstance(outcome, Accepted):
        return Judged(
            SendResult(message.id, State.ACCEPTED, now, wamid=outcome.wamid, sent_as=sent_as),
            None,
        )
    if isinstance(outcome, TransportFailure):
        if outcome.ambiguous:
            # The API may have the message: resending now could deliver it twice.
            unknown = SendResult(
                message.id,
                State.UNKNOWN,
                now,
                sent_as=sent_as,
                error_code="no_response",
                error_title="the request was sent but no answer came back",
                error_detail=outcome.reason,
            )
            return Judged(unknown, retry.ErrorClass.SERVER)
        error = retry.ErrorClass.SERVER
        code, title, detail, retry_after = "unreachable", outcome.reason, None, None
    else:
        error = retry.classify(outcome)
        code = str(outcome.code) if outcome.code is not None else f"http_{outcome.http_status}"
        title, detail, retry_after = outcome.title, outcome.detail, outcome.retry_after
    if error is retry.ErrorClass.WINDOW_CLOSED:
        return Judged(window_closed(message, sent_as, now, f"API error {code}: {title}"), error)
    decision = retry.decide(error, message.attempts, policy, rand, retry_after)
    if isinstance(decision, retry.Retry):
        result = SendResult(
            message.id,
            State.QUEUED,
            now,
            sent_as=sent_as,
            error_code=code,
            error_title=title,
            error_detail=detail,
            # A zero delay keeps the row in line as if never tried: a paused channel's rows.
            next_attempt_at=now + decision.delay if decision.delay else None,
            attempts_delta=0 if decision.charge else -1,
        )
        return Judged(result, error, retry_after)
    if decision.exhausted is not None:
        detail = f"{detail} ({decision.exhausted})" if detail else decision.exhausted
    failed = SendResult(
        message.id,
        State.FAILED,
        now,
        sent_as=sent_as,
        error_code=code,
        error_title=title,
        error_detail=detail,
    )
    return Judged(failed, error, retry_after)


def window_closed(
    message: ClaimedMessage, sent_as: SentAs, now: datetime, detail: str
) -> SendResult:
    """WhatsApp refused free-form for a closed window: the fallback goes next (once) or it fails."""
    refused = window.refused_for_closed_window(
        sent_as, message.fallback_template is not None, late=False
    )
    return SendResult(
        message.id,
        refused.state,
        now,
        sent_as=refused.sent_as,
        error_code=Code.WINDOW_CLOSED,
        error_title=refused.title,
        error_detail=detail,
        # A fallback still to send is the same attempt, not a new one.
        attempts_delta=-1 if refused.state is State.QUEUED else 0,
    )
