from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.outcome import WINDOW_CLOSED, WINDOW_CLOSED_TITLE, Judged, judge, window_closed
from outbox.domain.response import (
    Accepted,
    Rejected,
    SendOutcome,
    TransportFailure,
    Unreadable,
)
from outbox.domain.retry import ErrorClass, RetryPolicy

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy()
FALLBACK: dict[str, Any] = {
    "type": "template",
    "template": {"name": "reengage", "language": {"policy": "deterministic", "code": "de"}},
}
FALLBACK_NEXT_TITLE = "the 24-hour window is closed: sending the fallback_template next"
FALLBACK_REFUSED_TITLE = "the 24-hour window is closed and the fallback_template was refused too"


def claimed(
    attempts: int = 1, message_id: int = 42, fallback_template: Any = None
) -> ClaimedMessage:
    return ClaimedMessage(
        id=message_id,
        channel="shop-de",
        recipient="4915112345678",
        payload={"type": "text", "text": {"body": "Hallo"}},
        fallback_template=fallback_template,
        attempts=attempts,
        created_at=NOW - timedelta(minutes=5),
        expires_at=None,
    )


def const(value: float) -> Callable[[], float]:
    return lambda: value


def judged(
    outcome: SendOutcome,
    *,
    attempts: int = 1,
    sent_as: SentAs = SentAs.FREEFORM,
    rand: float = 1.0,
    policy: RetryPolicy = POLICY,
    fallback_template: Any = None,
) -> Judged:
    message = claimed(attempts, fallback_template=fallback_template)
    return judge(message, sent_as, outcome, now=NOW, policy=policy, rand=const(rand))


def run(
    outcome: SendOutcome,
    *,
    attempts: int = 1,
    sent_as: SentAs = SentAs.FREEFORM,
    rand: float = 1.0,
    policy: RetryPolicy = POLICY,
    fallback_template: Any = None,
) -> SendResult:
    return judged(
        outcome,
        attempts=attempts,
        sent_as=sent_as,
        rand=rand,
        policy=policy,
        fallback_template=fallback_template,
    ).result


@pytest.mark.parametrize("sent_as", list(SentAs), ids=str)
def test_accepted(sent_as: SentAs) -> None:
    assert judged(Accepted("wamid.HBgL", "4915112345678"), sent_as=sent_as) == Judged(
        SendResult(
            42,
            State.ACCEPTED,
            NOW,
            wamid="wamid.HBgL",
            sent_as=sent_as,
            answer_wa_id="4915112345678",
        ),
        None,
        None,
    )


@pytest.mark.parametrize("attempts", [1, 8])
def test_an_unreadable_success_is_unknown_not_retried(attempts: int) -> None:
    """A 2xx whose body could not be read: the API took the request. Even on the last attempt
    the row is not failed (it may have been sent), nor queued again."""
    verdict = judged(Unreadable(200, "not a JSON object: '<html>'"), attempts=attempts)
    assert verdict.error is ErrorClass.SERVER
    result = verdict.result
    assert (result.state, result.error_code) == (State.UNKNOWN, "unreadable_answer")
    assert result.error_detail == "not a JSON object: '<html>'"
    assert result.error_title
    assert (result.next_attempt_at, result.attempts_delta, result.wamid) == (None, 0, None)


def test_ambiguous_transport_failure_is_unknown_not_retried() -> None:
    verdict = judged(
        TransportFailure(ambiguous=True, reason="timed out waiting for the answer"),
        sent_as=SentAs.TEMPLATE,
    )
    assert verdict.error is ErrorClass.SERVER
    assert verdict.retry_after is None
    result = verdict.result
    assert result.state is State.UNKNOWN
    assert result.message_id == 42
    assert result.at == NOW
    assert result.sent_as is SentAs.TEMPLATE
    assert result.error_code == "no_response"
    assert result.error_detail == "timed out waiting for the answer"
    assert result.error_title
    assert result.next_attempt_at is None
    assert result.attempts_delta == 0
    assert result.wamid is None


@pytest.mark.parametrize(
    ("attempts", "rand", "next_attempt_at"),
    [
        pytest.param(1, 1.0, NOW + timedelta(seconds=2), id="first"),
        pytest.param(3, 1.0, NOW + timedelta(seconds=8), id="third"),
        pytest.param(3, 0.5, NOW + timedelta(seconds=4), id="third-half-jitter"),
        # A zero delay puts the row back in line (next_attempt_at NULL), still charged.
        pytest.param(7, 0.0, None, id="zero-jitter"),
    ],
)
def test_unreachable_is_retried_and_charged(
    attempts: int, rand: float, next_attempt_at: datetime | None
) -> None:
    verdict = judged(
        TransportFailure(ambiguous=False, reason="connect failed: refused"),
        attempts=attempts,
        rand=rand,
    )
    assert verdict == Judged(
        SendResult(
            42,
            State.QUEUED,
            NOW,
            sent_as=SentAs.FREEFORM,
            error_code="unreachable",
            error_title="connect failed: refused",
            error_detail=None,
            next_attempt_at=next_attempt_at,
            attempts_delta=0,
        ),
        ErrorClass.SERVER,
        None,
    )


@pytest.mark.parametrize("attempts", [8, 9])
def test_unreachable_fails_after_max_attempts(attempts: int) -> None:
    result = run(TransportFailure(ambiguous=False, reason="connect timed out"), attempts=attempts)
    assert result == SendResult(
        42,
        State.FAILED,
        NOW,
        sent_as=SentAs.FREEFORM,
        error_code="unreachable",
        error_title="connect timed out",
        error_detail=f"gave up after {attempts} attempts",
    )


def test_max_attempts_comes_from_the_policy() -> None:
    failure = TransportFailure(ambiguous=False, reason="connect timed out")
    policy = RetryPolicy(max_attempts=2)
    assert run(failure, attempts=1, policy=policy).state is State.QUEUED
    assert run(failure, attempts=2, policy=policy).state is State.FAILED


@pytest.mark.parametrize(
    ("rejected", "error_code", "error", "next_attempt_at"),
    [
        pytest.param(
            Rejected(429, None, "Too many requests", None),
            "http_429",
            ErrorClass.THROTTLE,
            NOW + timedelta(seconds=2),
            id="429-no-code",
        ),
        pytest.param(
            Rejected(429, None, "Too many requests", None, retry_after=30.0),
            "http_429",
            ErrorClass.THROTTLE,
            NOW + timedelta(seconds=30),
            id="429-retry-after",
        ),
        pytest.param(
            Rejected(500, 130429, "(#130429) Rate limit hit", "too many", retry_after=0.5),
            "130429",
            ErrorClass.THROTTLE,
            NOW + timedelta(seconds=2),
            id="130429-short-hint",
        ),
        pytest.param(
            Rejected(403, 131056, "(#131056) pair rate limit hit", None),
            "131056",
            ErrorClass.RECIPIENT_THROTTLE,
            NOW + timedelta(seconds=6),
            id="recipient-throttle",
        ),
        # The breaker holds the channel back: the row keeps its place in line.
        pytest.param(
            Rejected(200, 190, "Invalid OAuth access token", None),
            "190",
            ErrorClass.CHANNEL,
            None,
            id="channel",
        ),
        pytest.param(
            Rejected(401, None, "HTTP 401", None),
            "http_401",
            ErrorClass.CHANNEL,
            None,
            id="channel-401",
        ),
    ],
)
@pytest.mark.parametrize("attempts", [1, 8, 30])
def test_free_retries_give_the_attempt_back(
    rejected: Rejected,
    error_code: str,
    error: ErrorClass,
    next_attempt_at: datetime | None,
    attempts: int,
) -> None:
    assert judged(rejected, attempts=attempts) == Judged(
        SendResult(
            42,
            State.QUEUED,
            NOW,
            sent_as=SentAs.FREEFORM,
            error_code=error_code,
            error_title=rejected.title,
            error_detail=rejected.detail,
            next_attempt_at=next_attempt_at,
            attempts_delta=-1,
            # 131056 grows the recipient's pause (issue 18).
            pace_strike=error is ErrorClass.RECIPIENT_THROTTLE,
        ),
        error,
        rejected.retry_after,
    )


def test_server_rejection_is_retried_and_charged() -> None:
    result = run(Rejected(503, None, "HTTP 503", "<html>down</html>"), attempts=2, rand=0.5)
    assert result == SendResult(
        42,
        State.QUEUED,
        NOW,
        sent_as=SentAs.FREEFORM,
        error_code="http_503",
        error_title="HTTP 503",
        error_detail="<html>down</html>",
        next_attempt_at=NOW + timedelta(seconds=2),
        attempts_delta=0,
    )


def test_server_rejection_fails_after_max_attempts_and_says_why() -> None:
    result = run(Rejected(200, 131000, "Something went wrong", "boom"), attempts=8)
    assert result == SendResult(
        42,
        State.FAILED,
        NOW,
        sent_as=SentAs.FREEFORM,
        error_code="131000",
        error_title="Something went wrong",
        error_detail="boom (gave up after 8 attempts)",
    )


@pytest.mark.parametrize(
    ("outcome", "sent_as"),
    [
        pytest.param(TransportFailure(False, "refused"), sent_as, id=f"server-{sent_as}")
        for sent_as in SentAs
    ]
    + [
        pytest.param(Rejected(429, None, "HTTP 429", None), sent_as, id=f"throttle-{sent_as}")
        for sent_as in SentAs
    ]
    + [
        pytest.param(Rejected(400, 131053, "Media", None), sent_as, id=f"media-{sent_as}")
        for sent_as in SentAs
    ],
)
def test_a_retry_keeps_the_form_that_was_attempted(outcome: SendOutcome, sent_as: SentAs) -> None:
    result = run(outcome, sent_as=sent_as, fallback_template=FALLBACK)
    assert result.state is State.QUEUED
    assert result.sent_as is sent_as


@pytest.mark.parametrize(
    ("rejected", "error_code"),
    [
        pytest.param(
            Rejected(400, 131026, "(#131026) Message undeliverable", "not on WhatsApp"),
            "131026",
            id="permanent-code",
        ),
        pytest.param(Rejected(400, None, "HTTP 400", None), "http_400", id="permanent-no-code"),
        pytest.param(Rejected(400, 1013, "User is not valid", None), "1013", id="onprem-recipient"),
        pytest.param(
            Rejected(400, 132001, "(#132001) Template name does not exist", "no such template"),
            "132001",
            id="cloud-template-missing",
        ),
        pytest.param(
            Rejected(200, 2001, "Template missing", None), "2001", id="2xx-with-template-error"
        ),
    ],
)
@pytest.mark.parametrize("sent_as", [SentAs.TEMPLATE, SentAs.FALLBACK_TEMPLATE], ids=str)
@pytest.mark.parametrize("attempts", [1, 5])
def test_permanent_rejections_fail_with_the_api_error(
    rejected: Rejected, error_code: str, sent_as: SentAs, attempts: int
) -> None:
    # No "gave up after" note: the error itself is final, not the attempts.
    verdict = judged(rejected, sent_as=sent_as, attempts=attempts, fallback_template=FALLBACK)
    assert verdict == Judged(
        SendResult(
            42,
            State.FAILED,
            NOW,
            sent_as=sent_as,
            error_code=error_code,
            error_title=rejected.title,
            error_detail=rejected.detail,
        ),
        ErrorClass.PERMANENT,
        None,
    )


def test_a_zero_code_is_reported_as_zero() -> None:
    # Code 0 (auth failure) is falsy; it must not be replaced by http_<status>.
    result = run(Rejected(400, 0, "AuthException", None))
    assert result.error_code == "0"
    assert result.state is State.QUEUED
    assert result.attempts_delta == -1


@pytest.mark.parametrize(
    "rejected",
    [
        pytest.param(
            Rejected(400, 131053, "Media upload error", "could not fetch"), id="131053-cloud"
        ),
        pytest.param(Rejected(400, 131052, "Media download error", "404"), id="131052-cloud"),
        pytest.param(Rejected(400, 131014, "Media URL fetch failed", "404"), id="131014-cloud"),
        pytest.param(
            Rejected(404, 1006, "Resource not found", "unknown contact"), id="1006-onprem"
        ),
    ],
)
def test_media_error_retries_once_then_fails(rejected: Rejected) -> None:
    first = judged(rejected, attempts=1, rand=1.0)
    assert first == Judged(
        SendResult(
            42,
            State.QUEUED,
            NOW,
            sent_as=SentAs.FREEFORM,
            error_code=str(rejected.code),
            error_title=rejected.title,
            error_detail=rejected.detail,
            next_attempt_at=NOW + timedelta(seconds=2),
            attempts_delta=0,
        ),
        ErrorClass.MEDIA,
        None,
    )
    second = run(rejected, attempts=2)
    assert second == SendResult(
        42,
        State.FAILED,
        NOW,
        sent_as=SentAs.FREEFORM,
        error_code=str(rejected.code),
        error_title=rejected.title,
        error_detail=f"{rejected.detail} (gave up after 2 attempts)",
    )


def test_media_error_without_detail_says_why_it_gave_up() -> None:
    result = run(Rejected(400, 131053, "Media upload error", None), attempts=2)
    assert result.state is State.FAILED
    assert result.error_detail == "gave up after 2 attempts"


def test_the_result_is_for_the_claimed_row() -> None:
    result = judge(
        claimed(message_id=7),
        SentAs.FREEFORM,
        Rejected(400, None, "HTTP 400", None),
        now=NOW,
        policy=POLICY,
        rand=const(0.0),
    ).result
    assert result.message_id == 7
    assert result.at == NOW


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        pytest.param(3600.0, timedelta(hours=1), id="one-hour"),
        pytest.param(7200.0, timedelta(hours=1), id="two-hours-capped"),
        pytest.param(1e12, timedelta(hours=1), id="past-year-9999"),
        pytest.param(1e20, timedelta(hours=1), id="past-timedelta-max"),
    ],
)
def test_a_huge_retry_after_is_capped_not_a_crash(retry_after: float, delay: timedelta) -> None:
    result = run(Rejected(429, None, "Too many requests", None, retry_after=retry_after))
    assert result.state is State.QUEUED
    assert result.attempts_delta == -1
    assert result.next_attempt_at == NOW + delay


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_a_non_finite_retry_after_does_not_crash_the_sender(retry_after: float) -> None:
    result = run(Rejected(429, None, "Too many requests", None, retry_after=retry_after))
    assert result.state is State.QUEUED
    assert result.attempts_delta == -1
    assert result.next_attempt_at is not None
    assert NOW < result.next_attempt_at <= NOW + POLICY.max_retry_after


# --- Judged.error and Judged.retry_after --------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "attempts", "error", "retry_after"),
    [
        pytest.param(Accepted("wamid.X", None), 1, None, None, id="accepted"),
        pytest.param(
            TransportFailure(ambiguous=True, reason="read timeout"),
            1,
            ErrorClass.SERVER,
            None,
            id="ambiguous",
        ),
        pytest.param(
            TransportFailure(ambiguous=False, reason="refused"),
            1,
            ErrorClass.SERVER,
            None,
            id="unreachable",
        ),
        pytest.param(
            TransportFailure(ambiguous=False, reason="refused"),
            8,
            ErrorClass.SERVER,
            None,
            id="unreachable-exhausted",
        ),
        pytest.param(
            Rejected(429, None, "Too many requests", None),
            1,
            ErrorClass.THROTTLE,
            None,
            id="429-no-hint",
        ),
        pytest.param(
            Rejected(429, None, "Too many requests", None, retry_after=30.0),
            1,
            ErrorClass.THROTTLE,
            30.0,
            id="429-hint",
        ),
        pytest.param(
            Rejected(400, 130429, "(#130429) Rate limit hit", None, retry_after=7200.0),
            1,
            ErrorClass.THROTTLE,
            7200.0,
            id="130429-raw-hint-passed-on",
        ),
        pytest.param(
            Rejected(
                400,
                None,
                "You have exceeded the limit of 1 request every * seconds",
                None,
                retry_after=5.0,
            ),
            1,
            ErrorClass.THROTTLE,
            5.0,
            id="gateway-limit-hint",
        ),
        pytest.param(
            Rejected(400, 131056, "(#131056) pair rate limit hit", None),
            1,
            ErrorClass.RECIPIENT_THROTTLE,
            None,
            id="131056",
        ),
        pytest.param(
            Rejected(401, 190, "Invalid OAuth access token", None),
            1,
            ErrorClass.CHANNEL,
            None,
            id="190",
        ),
        pytest.param(
            Rejected(400, None, "Could not send message due to lack of payment", None),
            1,
            ErrorClass.CHANNEL,
            None,
            id="lack-of-payment",
        ),
        pytest.param(Rejected(503, None, "HTTP 503", None), 1, ErrorClass.SERVER, None, id="503"),
        pytest.param(
            Rejected(503, None, "HTTP 503", None), 8, ErrorClass.SERVER, None, id="503-exhausted"
        ),
        pytest.param(
            Rejected(200, None, "response has no message id", None),
            1,
            ErrorClass.SERVER,
            None,
            id="2xx-no-id",
        ),
        pytest.param(
            Rejected(400, 131053, "Media upload error", None),
            2,
            ErrorClass.MEDIA,
            None,
            id="media-exhausted",
        ),
        pytest.param(
            Rejected(400, 131026, "Message undeliverable", None),
            1,
            ErrorClass.PERMANENT,
            None,
            id="permanent",
        ),
        pytest.param(
            Rejected(400, 470, "Re-engagement message", None),
            1,
            ErrorClass.WINDOW_CLOSED,
            None,
            id="window-closed",
        ),
        pytest.param(
            Rejected(400, 131047, "(#131047) Re-engagement message", None, retry_after=9.0),
            1,
            ErrorClass.WINDOW_CLOSED,
            None,
            id="window-closed-hint-dropped",
        ),
    ],
)
def test_judged_error_and_retry_after(
    outcome: SendOutcome, attempts: int, error: ErrorClass | None, retry_after: float | None
) -> None:
    verdict = judged(outcome, attempts=attempts)
    assert verdict.error is error
    assert verdict.retry_after == retry_after


# --- the 24-hour window -------------------------------------------------------------------------

WINDOW_REJECTIONS = [
    pytest.param(
        Rejected(
            400,
            470,
            "Re-engagement message",
            "More than 24 hours have passed since the customer last replied to this number",
        ),
        "API error 470: Re-engagement message",
        id="onprem-470",
    ),
    pytest.param(
        Rejected(200, 470, "Re-engagement message", None),
        "API error 470: Re-engagement message",
        id="onprem-470-behind-200",
    ),
    pytest.param(
        Rejected(
            400,
            131047,
            "(#131047) Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        ),
        "API error 131047: (#131047) Re-engagement message",
        id="cloud-131047",
    ),
    pytest.param(
        Rejected(429, 131047, "(#131047) Re-engagement message", None, retry_after=30.0),
        "API error 131047: (#131047) Re-engagement message",
        id="cloud-131047-behind-429",
    ),
]


@pytest.mark.parametrize(("rejected", "detail"), WINDOW_REJECTIONS)
@pytest.mark.parametrize("attempts", [1, 8, 30])
def test_window_closed_free_form_with_a_fallback_queues_the_fallback(
    rejected: Rejected, detail: str, attempts: int
) -> None:
    verdict = judged(rejected, attempts=attempts, fallback_template=FALLBACK)
    assert verdict == Judged(
        SendResult(
            42,
            State.QUEUED,
            NOW,
            sent_as=SentAs.FALLBACK_TEMPLATE,
            error_code=WINDOW_CLOSED,
            error_title=FALLBACK_NEXT_TITLE,
            error_detail=detail,
            next_attempt_at=None,
            attempts_delta=-1,
        ),
        ErrorClass.WINDOW_CLOSED,
        None,
    )


@pytest.mark.parametrize(("rejected", "detail"), WINDOW_REJECTIONS)
@pytest.mark.parametrize("attempts", [1, 8])
def test_window_closed_free_form_without_a_fallback_fails(
    rejected: Rejected, detail: str, attempts: int
) -> None:
    verdict = judged(rejected, attempts=attempts)
    assert verdict == Judged(
        SendResult(
            42,
            State.FAILED,
            NOW,
            sent_as=SentAs.FREEFORM,
            error_code=WINDOW_CLOSED,
            error_title=WINDOW_CLOSED_TITLE,
            error_detail=detail,
        ),
        ErrorClass.WINDOW_CLOSED,
        None,
    )


@pytest.mark.parametrize(("rejected", "detail"), WINDOW_REJECTIONS)
def test_window_closed_for_the_fallback_itself_fails(rejected: Rejected, detail: str) -> None:
    # The fallback went out once and was refused too: no third form to try.
    verdict = judged(rejected, sent_as=SentAs.FALLBACK_TEMPLATE, fallback_template=FALLBACK)
    assert verdict == Judged(
        SendResult(
            42,
            State.FAILED,
            NOW,
            sent_as=SentAs.FALLBACK_TEMPLATE,
            error_code=WINDOW_CLOSED,
            error_title=FALLBACK_REFUSED_TITLE,
            error_detail=detail,
        ),
        ErrorClass.WINDOW_CLOSED,
        None,
    )


@pytest.mark.parametrize(("rejected", "detail"), WINDOW_REJECTIONS)
@pytest.mark.parametrize("fallback", [None, FALLBACK], ids=["no-fallback", "fallback"])
def test_window_closed_for_a_template_payload_fails_without_switching(
    rejected: Rejected, detail: str, fallback: Any
) -> None:
    result = run(rejected, sent_as=SentAs.TEMPLATE, fallback_template=fallback)
    assert result.state is State.FAILED
    assert result.sent_as is SentAs.TEMPLATE
    assert result.error_code == WINDOW_CLOSED
    assert result.error_detail == detail
    assert result.next_attempt_at is None
    assert result.attempts_delta == 0


@pytest.mark.parametrize(
    ("sent_as", "fallback", "state", "now_as", "title", "attempts_delta"),
    [
        pytest.param(
            SentAs.FREEFORM,
            FALLBACK,
            State.QUEUED,
            SentAs.FALLBACK_TEMPLATE,
            FALLBACK_NEXT_TITLE,
            -1,
            id="freeform-fallback",
        ),
        pytest.param(
            SentAs.FREEFORM,
            None,
            State.FAILED,
            SentAs.FREEFORM,
            WINDOW_CLOSED_TITLE,
            0,
            id="freeform-no-fallback",
        ),
        pytest.param(
            SentAs.FALLBACK_TEMPLATE,
            FALLBACK,
            State.FAILED,
            SentAs.FALLBACK_TEMPLATE,
            FALLBACK_REFUSED_TITLE,
            0,
            id="fallback-refused",
        ),
        # An empty object is still a fallback: only None means "none configured".
        pytest.param(
            SentAs.FREEFORM,
            {},
            State.QUEUED,
            SentAs.FALLBACK_TEMPLATE,
            FALLBACK_NEXT_TITLE,
            -1,
            id="freeform-empty-fallback",
        ),
    ],
)
def test_window_closed_helper(
    sent_as: SentAs,
    fallback: Any,
    state: State,
    now_as: SentAs,
    title: str,
    attempts_delta: int,
) -> None:
    message = claimed(attempts=3, message_id=9, fallback_template=fallback)
    assert window_closed(message, sent_as, NOW, "status webhook: 131047") == SendResult(
        9,
        state,
        NOW,
        sent_as=now_as,
        error_code=WINDOW_CLOSED,
        error_title=title,
        error_detail="status webhook: 131047",
        attempts_delta=attempts_delta,
    )
