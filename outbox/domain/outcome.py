"""Turns what happened to one send into the row's next state, and what the sender learns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from outbox.domain import parsing, retry, window
from outbox.domain import policy as error_policy
from outbox.domain.codes import Code, Title
from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.response import Accepted, SendOutcome, TransportFailure, Unreadable
from outbox.domain.user_ids import phone_digits

WINDOW_CLOSED = Code.WINDOW_CLOSED
WINDOW_CLOSED_TITLE = Title.WINDOW_CLOSED
UNREADABLE = (Code.UNREADABLE_ANSWER, Title.UNREADABLE_ANSWER)
NO_RESPONSE = (Code.NO_RESPONSE, Title.NO_RESPONSE)


class SendError(StrEnum):
    """The `error_class` label of a send on /metrics: what kept it from being accepted."""

    NONE = "none"  # accepted
    NETWORK = "network"  # no answer: the API could not be reached, or did not reply
    INVALID = "invalid"  # no request: the row cannot be sent as written
    EXPIRED = "expired"  # no request: `expires_at` had passed
    # The API's answer, classified (`retry.ErrorClass`); WINDOW_CLOSED also when no request
    # left because the window was already closed.
    THROTTLE = retry.ErrorClass.THROTTLE.value
    SERVER = retry.ErrorClass.SERVER.value
    RECIPIENT_THROTTLE = retry.ErrorClass.RECIPIENT_THROTTLE.value
    WINDOW_CLOSED = retry.ErrorClass.WINDOW_CLOSED.value
    MEDIA = retry.ErrorClass.MEDIA.value
    CHANNEL = retry.ErrorClass.CHANNEL.value
    PERMANENT = retry.ErrorClass.PERMANENT.value
    MARKETING_CAP = retry.ErrorClass.MARKETING_CAP.value
    OPTED_OUT = retry.ErrorClass.OPTED_OUT.value
    MAINTENANCE = retry.ErrorClass.MAINTENANCE.value
    SPAM_LIMIT = retry.ErrorClass.SPAM_LIMIT.value
    TEMPLATE_PAUSED = retry.ErrorClass.TEMPLATE_PAUSED.value
    # No request: a paused template's row, or marketing while the channel's is held.
    HELD = "held"


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


def refused_by_store(result: SendResult, reason: str) -> SendResult:
    """`result` with the values it took from outside (the wamid, the API's error texts)
    replaced by why the database refused it, for a row that must not stay `sending`.

    The state stays: an accepted message was sent, and its wamid is kept in the detail for
    an operator (a repeated one is the usual cause)."""
    detail = f"{reason}; wamid {result.wamid!r}" if result.wamid else reason
    return replace(
        result,
        wamid=None,
        error_code=Code.RESULT_REFUSED,
        error_title=Title.RESULT_REFUSED,
        error_detail=parsing.storable(detail, 500),
    )


@dataclass(frozen=True, slots=True)
class Judged:
    """The whole decision about one answer: the row's next state, and what the channel learns.

    Verdicts compare by what they decide for the row (`result`, `error`, `retry_after`); the
    hold and the metric class follow from those and the kind of outcome.
    """

    result: SendResult
    error: retry.ErrorClass | None  # None when accepted
    retry_after: float | None = None  # the API's Retry-After, for throttles
    # How long the channel's shared claims wait after a throttle; None for any other answer.
    throttle_hold: timedelta | None = field(default=None, compare=False)
    metric: SendError = field(default=SendError.NONE, compare=False)


def judge(
    message: ClaimedMessage,
    sent_as: SentAs,
    outcome: SendOutcome,
    *,
    now: datetime,
    policy: retry.RetryPolicy,
    rand: Callable[[], float],
    recipient_gap: timedelta = timedelta(0),
) -> Judged:
    """`recipient_gap` is the channel's pair pacing: after an accepted send, no other message
    goes to the same recipient for that long."""
    judged = _judge(message, sent_as, outcome, now=now, policy=policy, rand=rand)
    result = judged.result
    if result.state is State.ACCEPTED and recipient_gap:
        result = replace(result, pace_until=result.at + recipient_gap)
    if judged.error is retry.ErrorClass.RECIPIENT_THROTTLE:
        result = replace(result, pace_strike=True)  # the recipient's pause grows (131056)
    if isinstance(outcome, TransportFailure):
        metric = SendError.NETWORK
    else:
        metric = SendError.NONE if judged.error is None else SendError(judged.error.value)
    hold = None
    if judged.error is retry.ErrorClass.THROTTLE:
        hold = retry.throttle_hold(policy, judged.retry_after)
    return Judged(result, judged.error, judged.retry_after, hold, metric)


def _judge(
    message: ClaimedMessage,
    sent_as: SentAs,
    outcome: SendOutcome,
    *,
    now: datetime,
    policy: retry.RetryPolicy,
    rand: Callable[[], float],
) -> Judged:
    if isinstance(outcome, Accepted):
        accepted = SendResult(
            message.id,
            State.ACCEPTED,
            now,
            wamid=outcome.wamid,
            sent_as=sent_as,
            answer_wa_id=phone_digits(outcome.wa_id),
            answer_bsuid=outcome.user_id,
            message_status=outcome.message_status,
        )
        return Judged(accepted, None)
    if isinstance(outcome, Unreadable):  # a 2xx: the API took the request
        return _unknown(message, sent_as, now, UNREADABLE, outcome.reason)
    code: str
    if isinstance(outcome, TransportFailure):
        if outcome.ambiguous:  # the API may have the message
            return _unknown(message, sent_as, now, NO_RESPONSE, outcome.reason)
        error = retry.ErrorClass.SERVER
        code, title, detail, retry_after = Code.UNREACHABLE, outcome.reason, None, None
    else:
        error = retry.classify(outcome)
        code = str(outcome.code) if outcome.code is not None else f"http_{outcome.http_status}"
        title, detail, retry_after = outcome.title, outcome.detail, outcome.retry_after
    if error is retry.ErrorClass.WINDOW_CLOSED:
        return Judged(window_closed(message, sent_as, now, f"API error {code}: {title}"), error)
    if error in error_policy.DECIDED_HERE:
        decided = error_policy.after_answer(
            message, sent_as, error, now=now, policy=policy, rand=rand()
        )
        why = decided.error_detail
        result = replace(
            decided,
            error_code=code,
            error_title=title,
            error_detail=f"{detail} ({why})" if detail and why else detail or why,
        )
        return Judged(result, error, retry_after)
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


def _unknown(
    message: ClaimedMessage,
    sent_as: SentAs,
    now: datetime,
    why: tuple[Code, Title],
    reason: str,
) -> Judged:
    """The request may have been delivered: resending now could deliver it twice."""
    code, title = why
    unknown = SendResult(
        message.id,
        State.UNKNOWN,
        now,
        sent_as=sent_as,
        error_code=code,
        error_title=title,
        error_detail=reason,
    )
    return Judged(unknown, retry.ErrorClass.SERVER)


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
