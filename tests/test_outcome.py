from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.outcome import judge
from outbox.domain.response import Accepted, Rejected, SendOutcome, TransportFailure
from outbox.domain.retry import RetryPolicy

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def claimed(attempts: int = 1, message_id: int = 42) -> ClaimedMessage:
    return ClaimedMessage(
        id=message_id,
        channel="shop-de",
        recipient="4915112345678",
        payload={"type": "text", "text": {"body": "Hallo"}},
        fallback_template=None,
        attempts=attempts,
        created_at=NOW - timedelta(minutes=5),
        expires_at=None,
    )


def const(value: float) -> Callable[[], float]:
    return lambda: value


def run(
    outcome: SendOutcome,
    *,
    attempts: int = 1,
    sent_as: SentAs = SentAs.FREEFORM,
    rand: float = 1.0,
    policy: RetryPolicy = POLICY,
) -> SendResult:
    return judge(
        claimed(attempts), sent_as, outcome, now=NOW, policy=policy, rand=const(rand)
    ).result


@pytest.mark.parametrize("sent_as", list(SentAs), ids=str)
def test_accepted(sent_as: SentAs) -> None:
    result = run(Accepted("wamid.HBgL", "4915112345678"), sent_as=sent_as)
    assert result == SendResult(42, State.ACCEPTED, NOW, wamid="wamid.HBgL", sent_as=sent_as)


def test_ambiguous_transport_failure_is_unknown_not_retried() -> None:
    result = run(
        TransportFailure(ambiguous=True, reason="timed out waiting for the answer"),
        sent_as=SentAs.TEMPLATE,
    )
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
    ("attempts", "rand", "delay"),
    [
        (1, 1.0, timedelta(seconds=2)),
        (3, 1.0, timedelta(seconds=8)),
        (3, 0.5, timedelta(seconds=4)),
        (7, 0.0, timedelta(0)),
    ],
)
def test_unreachable_is_retried_and_charged(attempts: int, rand: float, delay: timedelta) -> None:
    result = run(
        TransportFailure(ambiguous=False, reason="connect failed: refused"),
        attempts=attempts,
        rand=rand,
    )
    assert result == SendResult(
        42,
        State.QUEUED,
        NOW,
        error_code="unreachable",
        error_title="connect failed: refused",
        error_detail=None,
        next_attempt_at=NOW + delay,
        attempts_delta=0,
    )


@pytest.mark.parametrize("attempts", [8, 9])
def test_unreachable_fails_after_max_attempts(attempts: int) -> None:
    result = run(TransportFailure(ambiguous=False, reason="connect timed out"), attempts=attempts)
    assert result == SendResult(
        42,
        State.FAILED,
        NOW,
        error_code="unreachable",
        error_title="connect timed out",
        error_detail=f"(gave up after {attempts} attempts)",
    )


def test_max_attempts_comes_from_the_policy() -> None:
    failure = TransportFailure(ambiguous=False, reason="connect timed out")
    policy = RetryPolicy(max_attempts=2)
    assert run(failure, attempts=1, policy=policy).state is State.QUEUED
    assert run(failure, attempts=2, policy=policy).state is State.FAILED


@pytest.mark.parametrize(
    ("rejected", "error_code", "delay"),
    [
        pytest.param(
            Rejected(429, None, "Too many requests", None),
            "http_429",
            timedelta(seconds=2),
            id="429-no-code",
        ),
        pytest.param(
            Rejected(429, None, "Too many requests", None, retry_after=30.0),
            "http_429",
            timedelta(seconds=30),
            id="429-retry-after",
        ),
        pytest.param(
            Rejected(500, 130429, "(#130429) Rate limit hit", "too many", retry_after=0.5),
            "130429",
            timedelta(seconds=2),
            id="130429-short-hint",
        ),
        pytest.param(
            Rejected(403, 131056, "(#131056) pair rate limit hit", None),
            "131056",
            timedelta(seconds=6),
            id="recipient-throttle",
        ),
        pytest.param(
            Rejected(200, 190, "Invalid OAuth access token", None),
            "190",
            timedelta(seconds=60),
            id="channel",
        ),
        pytest.param(
            Rejected(401, None, "HTTP 401", None),
            "http_401",
            timedelta(seconds=60),
            id="channel-401",
        ),
    ],
)
@pytest.mark.parametrize("attempts", [1, 8, 30])
def test_free_retries_give_the_attempt_back(
    rejected: Rejected, error_code: str, delay: timedelta, attempts: int
) -> None:
    result = run(rejected, attempts=attempts)
    assert result == SendResult(
        42,
        State.QUEUED,
        NOW,
        error_code=error_code,
        error_title=rejected.title,
        error_detail=rejected.detail,
        next_attempt_at=NOW + delay,
        attempts_delta=-1,
    )


def test_server_rejection_is_retried_and_charged() -> None:
    result = run(Rejected(503, None, "HTTP 503", "<html>down</html>"), attempts=2, rand=0.5)
    assert result == SendResult(
        42,
        State.QUEUED,
        NOW,
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
        error_code="131000",
        error_title="Something went wrong",
        error_detail="boom (gave up after 8 attempts)",
    )


@pytest.mark.parametrize(
    ("rejected", "error_code"),
    [
        pytest.param(
            Rejected(400, 131026, "(#131026) Message undeliverable", "not on WhatsApp"),
            "131026",
            id="permanent-code",
        ),
        pytest.param(Rejected(404, None, "HTTP 404", None), "http_404", id="permanent-no-code"),
        pytest.param(
            Rejected(404, 1006, "Resource not found", "unknown contact"), "1006", id="1006"
        ),
        pytest.param(
            Rejected(400, 470, "Re-engagement message", "24h passed"), "470", id="window-closed"
        ),
        pytest.param(
            Rejected(400, 131047, "Re-engagement message", None), "131047", id="window-cloud"
        ),
    ],
)
def test_permanent_rejections_fail_with_the_api_error(rejected: Rejected, error_code: str) -> None:
    result = run(rejected, sent_as=SentAs.TEMPLATE)
    assert result == SendResult(
        42,
        State.FAILED,
        NOW,
        error_code=error_code,
        error_title=rejected.title,
        error_detail=rejected.detail,
    )


def test_a_zero_code_is_reported_as_zero() -> None:
    # Code 0 (auth failure) is falsy; it must not be replaced by http_<status>.
    result = run(Rejected(400, 0, "AuthException", None))
    assert result.error_code == "0"
    assert result.state is State.QUEUED
    assert result.attempts_delta == -1


def test_media_error_retries_once_then_fails() -> None:
    rejected = Rejected(400, 131053, "Media upload error", "could not fetch")
    first = run(rejected, attempts=1, rand=1.0)
    assert first.state is State.QUEUED
    assert first.attempts_delta == 0
    assert first.next_attempt_at == NOW + timedelta(seconds=2)
    second = run(rejected, attempts=2)
    assert second == SendResult(
        42,
        State.FAILED,
        NOW,
        error_code="131053",
        error_title="Media upload error",
        error_detail="could not fetch",
    )


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
