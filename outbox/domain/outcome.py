"""Turns what happened to one send into the row's next state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from outbox.domain import retry
from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.response import Accepted, SendOutcome, TransportFailure


def result_for(
    message: ClaimedMessage,
    sent_as: SentAs,
    outcome: SendOutcome,
    *,
    now: datetime,
    policy: retry.RetryPolicy,
    rand: Callable[[], float],
) -> SendResult:
    if isinstance(outcome, Accepted):
        return SendResult(message.id, State.ACCEPTED, now, wamid=outcome.wamid, sent_as=sent_as)
    if isinstance(outcome, TransportFailure):
        if outcome.ambiguous:
            # The API may have the message: resending now could deliver it twice.
            return SendResult(
                message.id,
                State.UNKNOWN,
                now,
                sent_as=sent_as,
                error_code="no_response",
                error_title="the request was sent but no answer came back",
                error_detail=outcome.reason,
            )
        return _retry_or_fail(
            message, now, policy, rand, retry.ErrorClass.SERVER, "unreachable", outcome.reason, None
        )
    return _retry_or_fail(
        message,
        now,
        policy,
        rand,
        retry.classify(outcome),
        str(outcome.code) if outcome.code is not None else f"http_{outcome.http_status}",
        outcome.title,
        outcome.detail,
        outcome.retry_after,
    )


def _retry_or_fail(
    message: ClaimedMessage,
    now: datetime,
    policy: retry.RetryPolicy,
    rand: Callable[[], float],
    error: retry.ErrorClass,
    code: str,
    title: str,
    detail: str | None,
    retry_after: float | None = None,
) -> SendResult:
    decision = retry.decide(error, message.attempts, policy, rand, retry_after)
    if isinstance(decision, retry.Retry):
        return SendResult(
            message.id,
            State.QUEUED,
            now,
            error_code=code,
            error_title=title,
            error_detail=detail,
            next_attempt_at=now + decision.delay,
            attempts_delta=0 if decision.charge else -1,
        )
    return SendResult(
        message.id,
        State.FAILED,
        now,
        error_code=code,
        error_title=title,
        error_detail=detail
        if decision.reason == error.value
        else f"{detail or ''} ({decision.reason})".strip(),
    )
