from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from outbox.domain import retry
from outbox.domain.response import Rejected, parse_send_response
from outbox.domain.retry import ErrorClass, GiveUp, Retry, RetryPolicy, backoff, classify, decide

FIXTURES = Path("/work/shared/fixtures/webhooks")
POLICY = RetryPolicy()

# waba-api.md §9.2, written out so that a change to the table in retry.py shows up here.
EXPECTED_BY_CODE: dict[int, ErrorClass] = {
    **dict.fromkeys((4, 80007, 130429, 429, 1015, 1016), ErrorClass.THROTTLE),
    **dict.fromkeys(
        (1, 2, 131000, 131016, 133004, 500, 1000, 1011, 1014, 1017, 1018, 1023, 2002, 408, 410),
        ErrorClass.SERVER,
    ),
    131056: ErrorClass.RECIPIENT_THROTTLE,
    470: ErrorClass.WINDOW_CLOSED,
    131047: ErrorClass.WINDOW_CLOSED,
    **dict.fromkeys((131052, 131053, 131014), ErrorClass.MEDIA),
    **dict.fromkeys(
        (0, 190, 10, 368, 402, 131031, 131042, 131045, 133010, 1022, 1024, 1031, 430, 432, 433),
        ErrorClass.CHANNEL,
    ),
    **dict.fromkeys(range(200, 300), ErrorClass.CHANNEL),
}


def const(value: float) -> Callable[[], float]:
    return lambda: value


def test_expected_table_covers_every_code_in_the_module() -> None:
    assert set(EXPECTED_BY_CODE) == set(retry._BY_CODE)


def _shaped(code: int, shape: str) -> Rejected:
    # HTTP 400 with an unknown code would be PERMANENT, so every case below proves the code counted.
    if shape == "onprem":
        return Rejected(400, code, "Some error", "something happened")
    return Rejected(400, code, f"(#{code}) Some error", None)


@pytest.mark.parametrize("shape", ["onprem", "cloud"])
@pytest.mark.parametrize(
    ("code", "expected"),
    [pytest.param(code, cls, id=f"{code}-{cls}") for code, cls in EXPECTED_BY_CODE.items()],
)
def test_classify_by_code(code: int, expected: ErrorClass, shape: str) -> None:
    assert classify(_shaped(code, shape)) is expected


@pytest.mark.parametrize(
    ("rejected", "expected"),
    [
        pytest.param(Rejected(429, None, "Too many requests", None), ErrorClass.THROTTLE, id="429"),
        pytest.param(
            Rejected(429, 131026, "(#131026) Message undeliverable", None),
            ErrorClass.THROTTLE,
            id="429-unknown-code",
        ),
        pytest.param(
            Rejected(400, None, "You have exceeded the limit of 1 request every * seconds", None),
            ErrorClass.THROTTLE,
            id="gateway-exceeded-limit",
        ),
        pytest.param(
            Rejected(400, None, "You have EXCEEDED the endpoint rate LIMIT", None),
            ErrorClass.THROTTLE,
            id="gateway-exceeded-limit-case",
        ),
        pytest.param(Rejected(401, None, "HTTP 401", None), ErrorClass.CHANNEL, id="401"),
        pytest.param(Rejected(403, None, "HTTP 403", None), ErrorClass.CHANNEL, id="403"),
        pytest.param(
            Rejected(400, None, "Could not send message due to lack of payment", None),
            ErrorClass.CHANNEL,
            id="lack-of-payment",
        ),
        pytest.param(
            Rejected(400, None, "Your WhatsApp for Business API Has Been Disabled", None),
            ErrorClass.CHANNEL,
            id="has-been-disabled",
        ),
        pytest.param(Rejected(500, None, "HTTP 500", None), ErrorClass.SERVER, id="500"),
        pytest.param(Rejected(502, None, "HTTP 502", None), ErrorClass.SERVER, id="502"),
        pytest.param(Rejected(503, None, "HTTP 503", None), ErrorClass.SERVER, id="503"),
        pytest.param(Rejected(504, None, "HTTP 504", None), ErrorClass.SERVER, id="504"),
        pytest.param(Rejected(408, None, "HTTP 408", None), ErrorClass.SERVER, id="408"),
        pytest.param(
            Rejected(500, 999999, "unknown", None), ErrorClass.SERVER, id="500-unknown-code"
        ),
        pytest.param(
            Rejected(200, None, "response has no message id", None),
            ErrorClass.SERVER,
            id="200-no-code",
        ),
        pytest.param(
            Rejected(201, None, "response has no message id", None),
            ErrorClass.SERVER,
            id="201-no-code",
        ),
        pytest.param(
            Rejected(200, 131026, "(#131026) Message undeliverable", None),
            ErrorClass.PERMANENT,
            id="200-unknown-code",
        ),
        pytest.param(
            Rejected(400, 131026, "(#131026) Message undeliverable", None),
            ErrorClass.PERMANENT,
            id="400-unknown-code",
        ),
        pytest.param(
            Rejected(400, 1001, "Message too long", None), ErrorClass.PERMANENT, id="400-1001"
        ),
        pytest.param(
            Rejected(404, 1006, "Resource not found", "unknown contact"),
            ErrorClass.PERMANENT,
            id="404-1006",
        ),
        pytest.param(Rejected(400, None, "HTTP 400", None), ErrorClass.PERMANENT, id="400"),
        pytest.param(
            Rejected(400, None, "Quota exceeded", None), ErrorClass.PERMANENT, id="exceeded-alone"
        ),
    ],
)
def test_classify_by_status_and_title(rejected: Rejected, expected: ErrorClass) -> None:
    assert classify(rejected) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        pytest.param(403, 131056, ErrorClass.RECIPIENT_THROTTLE, id="131056-behind-403"),
        pytest.param(500, 130429, ErrorClass.THROTTLE, id="130429-behind-500"),
        pytest.param(200, 190, ErrorClass.CHANNEL, id="190-behind-200"),
        pytest.param(429, 131047, ErrorClass.WINDOW_CLOSED, id="131047-behind-429"),
        pytest.param(401, 131000, ErrorClass.SERVER, id="131000-behind-401"),
        pytest.param(503, 131052, ErrorClass.MEDIA, id="131052-behind-503"),
    ],
)
def test_code_wins_over_status(status: int, code: int, expected: ErrorClass) -> None:
    assert classify(Rejected(status, code, "error", None)) is expected


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("cloud__send-error__130429-rate-limit.json", 500, ErrorClass.THROTTLE),
        ("cloud__send-error__131056-pair-rate-limit.json", 403, ErrorClass.RECIPIENT_THROTTLE),
        ("cloud__send-error__190-invalid-token.json", 200, ErrorClass.CHANNEL),
        ("onprem__send-error__200-with-errors-232.json", 200, ErrorClass.CHANNEL),
        ("onprem__send-error__404-1006-unknown-contact.json", 404, ErrorClass.PERMANENT),
        ("onprem__send-error__429-no-code.json", 429, ErrorClass.THROTTLE),
        ("onprem__send-response__200-empty-messages.json", 200, ErrorClass.SERVER),
    ],
    ids=lambda v: v.removesuffix(".json") if isinstance(v, str) else None,
)
def test_classify_real_fixtures(name: str, status: int, expected: ErrorClass) -> None:
    body = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    rejected = parse_send_response(status, body)
    assert isinstance(rejected, Rejected)
    assert classify(rejected) is expected


@pytest.mark.parametrize(
    ("developer_message", "expected"),
    [
        ("You have exceeded the limit of 1 request every * seconds. Try again later.", "throttle"),
        ("Could not send message due to lack of payment", "channel"),
        ("Your WhatsApp for Business API has been disabled", "channel"),
        ("Something else went wrong", "permanent"),
    ],
)
def test_classify_gateway_bodies(developer_message: str, expected: str) -> None:
    body = {"meta": {"success": False, "httpCode": 400, "developerMessage": developer_message}}
    rejected = parse_send_response(400, body)
    assert isinstance(rejected, Rejected)
    assert classify(rejected) == expected


# --- decide -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        pytest.param(None, timedelta(seconds=2), id="no-hint"),
        pytest.param(30.0, timedelta(seconds=30), id="honours-hint"),
        pytest.param(2.5, timedelta(seconds=2.5), id="hint-just-above"),
        pytest.param(0.5, timedelta(seconds=2), id="hint-below-floor"),
        pytest.param(0.0, timedelta(seconds=2), id="hint-zero"),
    ],
)
@pytest.mark.parametrize("attempts", [1, 8, 100])
def test_throttle_is_free_and_honours_retry_after(
    retry_after: float | None, delay: timedelta, attempts: int
) -> None:
    assert decide(ErrorClass.THROTTLE, attempts, POLICY, const(1.0), retry_after) == Retry(
        delay, charge=False
    )


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        pytest.param(3599.0, timedelta(seconds=3599), id="just-below-cap"),
        pytest.param(7200.0, timedelta(hours=1), id="above-cap"),
        pytest.param(1e20, timedelta(hours=1), id="beyond-timedelta"),
        pytest.param(float("inf"), timedelta(seconds=2), id="infinite-ignored"),
        pytest.param(float("nan"), timedelta(seconds=2), id="nan-ignored"),
    ],
)
def test_throttle_retry_after_is_capped(retry_after: float, delay: timedelta) -> None:
    assert decide(ErrorClass.THROTTLE, 1, POLICY, const(1.0), retry_after) == Retry(
        delay, charge=False
    )


def test_retry_after_cap_comes_from_the_policy() -> None:
    policy = RetryPolicy(max_retry_after=timedelta(seconds=20))
    assert decide(ErrorClass.THROTTLE, 1, policy, const(1.0), 90.0) == Retry(
        timedelta(seconds=20), charge=False
    )


def test_throttle_floor_comes_from_the_policy() -> None:
    policy = RetryPolicy(throttle_delay=timedelta(seconds=10))
    assert decide(ErrorClass.THROTTLE, 1, policy, const(1.0), 3.0) == Retry(
        timedelta(seconds=10), charge=False
    )
    assert decide(ErrorClass.THROTTLE, 1, policy, const(1.0), 12.0) == Retry(
        timedelta(seconds=12), charge=False
    )


@pytest.mark.parametrize("attempts", [1, 8, 100])
def test_recipient_throttle_waits_six_seconds_free(attempts: int) -> None:
    assert decide(ErrorClass.RECIPIENT_THROTTLE, attempts, POLICY, const(1.0)) == Retry(
        timedelta(seconds=6), charge=False
    )


@pytest.mark.parametrize("attempts", [1, 8, 100])
def test_channel_trouble_is_free(attempts: int) -> None:
    assert decide(ErrorClass.CHANNEL, attempts, POLICY, const(1.0)) == Retry(
        timedelta(seconds=60), charge=False
    )


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        (1, timedelta(seconds=2)),
        (2, timedelta(seconds=4)),
        (3, timedelta(seconds=8)),
        (7, timedelta(seconds=128)),
    ],
)
def test_server_errors_are_charged_with_backoff(attempts: int, delay: timedelta) -> None:
    assert decide(ErrorClass.SERVER, attempts, POLICY, const(1.0)) == Retry(delay, charge=True)
    assert decide(ErrorClass.SERVER, attempts, POLICY, const(0.0)) == Retry(
        timedelta(0), charge=True
    )


@pytest.mark.parametrize("attempts", [8, 9, 50])
def test_server_errors_give_up_at_max_attempts(attempts: int) -> None:
    assert decide(ErrorClass.SERVER, attempts, POLICY, const(1.0)) == GiveUp(
        f"gave up after {attempts} attempts"
    )


def test_max_attempts_comes_from_the_policy() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert isinstance(decide(ErrorClass.SERVER, 2, policy, const(0.5)), Retry)
    assert decide(ErrorClass.SERVER, 3, policy, const(0.5)) == GiveUp("gave up after 3 attempts")


def test_server_errors_with_a_high_attempt_cap_stay_within_the_backoff_cap() -> None:
    policy = RetryPolicy(max_attempts=100)
    assert decide(ErrorClass.SERVER, 60, policy, const(1.0)) == Retry(
        policy.backoff_cap, charge=True
    )


def test_media_retries_once_then_gives_up() -> None:
    assert decide(ErrorClass.MEDIA, 1, POLICY, const(1.0)) == Retry(
        timedelta(seconds=2), charge=True
    )
    assert decide(ErrorClass.MEDIA, 2, POLICY, const(1.0)) == GiveUp("gave up after 2 attempts")
    assert decide(ErrorClass.MEDIA, 3, POLICY, const(1.0)) == GiveUp("gave up after 3 attempts")


@pytest.mark.parametrize("error", [ErrorClass.PERMANENT, ErrorClass.WINDOW_CLOSED])
@pytest.mark.parametrize("attempts", [1, 2])
def test_permanent_errors_give_up_at_once(error: ErrorClass, attempts: int) -> None:
    assert decide(error, attempts, POLICY, const(0.0), 30.0) == GiveUp()


# --- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 5, 9, 20])
def test_backoff_with_rand_zero_is_zero(attempt: int) -> None:
    assert backoff(attempt, POLICY, const(0.0)) == timedelta(0)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [
        (1, timedelta(seconds=2)),
        (2, timedelta(seconds=4)),
        (4, timedelta(seconds=16)),
        (8, timedelta(seconds=256)),
        (9, timedelta(minutes=5)),
        (20, timedelta(minutes=5)),
    ],
)
def test_backoff_with_rand_one_is_the_ceiling(attempt: int, ceiling: timedelta) -> None:
    assert backoff(attempt, POLICY, const(1.0)) == ceiling


@pytest.mark.parametrize("attempt", [30, 47, 64, 1000])
def test_backoff_is_capped_for_large_attempts(attempt: int) -> None:
    assert backoff(attempt, POLICY, const(1.0)) == POLICY.backoff_cap


@pytest.mark.parametrize("attempt", [0, -3])
def test_backoff_before_the_first_attempt_uses_the_base(attempt: int) -> None:
    assert backoff(attempt, POLICY, const(1.0)) == POLICY.backoff_base


def test_backoff_is_scaled_by_rand() -> None:
    assert backoff(3, POLICY, const(0.25)) == timedelta(seconds=2)


def test_backoff_follows_the_policy() -> None:
    policy = RetryPolicy(backoff_base=timedelta(seconds=1), backoff_cap=timedelta(seconds=10))
    assert [backoff(a, policy, const(1.0)) for a in range(1, 7)] == [
        timedelta(seconds=s) for s in (1, 2, 4, 8, 10, 10)
    ]


def test_backoff_stays_within_full_jitter_bounds() -> None:
    rng = random.Random(1234)
    for attempt in range(1, 25):
        ceiling = min(POLICY.backoff_cap, POLICY.backoff_base * 2 ** (attempt - 1))
        for _ in range(20):
            assert timedelta(0) <= backoff(attempt, POLICY, rng.random) <= ceiling
