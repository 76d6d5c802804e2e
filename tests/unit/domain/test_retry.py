from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import timedelta

import pytest

from outbox.domain import retry
from outbox.domain.response import Rejected, parse_send_response
from outbox.domain.retry import ErrorClass, GiveUp, Retry, RetryPolicy, backoff, classify, decide
from tests.paths import WEBHOOK_FIXTURES

FIXTURES = WEBHOOK_FIXTURES
POLICY = RetryPolicy()


def const(value: float) -> Callable[[], float]:
    return lambda: value


T = ErrorClass.THROTTLE
S = ErrorClass.SERVER
R = ErrorClass.RECIPIENT_THROTTLE
W = ErrorClass.WINDOW_CLOSED
M = ErrorClass.MEDIA
C = ErrorClass.CHANNEL
P = ErrorClass.PERMANENT


def onprem(
    expected: ErrorClass,
    status: int,
    code: int,
    title: str,
    details: str | None = None,
    *,
    note: str = "",
) -> pytest.ParameterSet:
    """An On-Premise `errors[{code, title, details}]` answer behind `status`."""
    return pytest.param(
        Rejected(status, code, title, details),
        expected,
        id=f"onprem-{code}-http{status}{note and '-' + note}",
    )


def cloud(
    expected: ErrorClass, status: int, code: int, message: str, details: str | None = None
) -> pytest.ParameterSet:
    """A Cloud API (Graph) `error{message, code, error_data.details}` answer behind `status`."""
    return pytest.param(
        Rejected(status, code, f"(#{code}) {message}", details),
        expected,
        id=f"cloud-{code}-http{status}",
    )


def bare(expected: ErrorClass, status: int, title: str, name: str) -> pytest.ParameterSet:
    """No API code: a 360dialog gateway `meta` error, a code-less `errors[]`, or a non-JSON body."""
    return pytest.param(Rejected(status, None, title, None), expected, id=f"{name}-http{status}")


# waba-api.md §9.2, row by row, with the codes of §3.2 / §3.3 the rows name, in both dialects.
# On-Premise-only codes get a Cloud row too (and the reverse): the class follows the code, and
# real traffic mixes them (On-Premise status webhooks carry Cloud codes in a flat body).
CLASSIFICATION = [
    # HTTP 429; 360dialog 400 "exceeded … limit"; On-Prem 1015/1016/429; Cloud 130429, 4, 80007.
    bare(T, 429, "Too many requests", "onprem-nocode"),
    bare(T, 429, "HTTP 429", "non-json"),
    bare(
        T,
        400,
        "You have exceeded the limit of 1 request every * seconds. Try again later.",
        "gateway-limit",
    ),
    bare(T, 400, "You have exceeded the endpoint rate limit", "gateway-endpoint-limit"),
    bare(T, 400, "You have EXCEEDED the endpoint rate LIMIT", "gateway-limit-case"),
    onprem(T, 429, 1015, "Too many requests"),
    onprem(T, 400, 1015, "Too many requests"),
    cloud(T, 400, 1015, "Too many requests"),
    onprem(T, 503, 1016, "System overloaded"),
    cloud(T, 400, 1016, "System overloaded"),
    onprem(T, 429, 429, "Rate limit hit"),
    onprem(T, 400, 429, "Rate limit hit"),
    cloud(T, 400, 429, "Rate limit hit"),
    cloud(T, 400, 130429, "Rate limit hit", "too many messages sent from this phone number"),
    cloud(T, 429, 130429, "Rate limit hit"),
    onprem(T, 400, 130429, "Rate limit hit"),
    cloud(T, 400, 4, "Application request limit reached"),
    onprem(T, 400, 4, "Application request limit reached"),
    cloud(T, 400, 80007, "Rate limit issues"),
    onprem(T, 429, 80007, "Rate limit issues"),
    # HTTP 503; On-Prem 1011, 1014, 1017/1018, 1023, 500/1000; Cloud 1, 2, 131000, 131016, 133004.
    bare(S, 503, "HTTP 503", "non-json"),
    bare(S, 503, "Service Unavailable", "onprem-nocode"),
    onprem(S, 503, 1011, "Service not ready"),
    cloud(S, 400, 1011, "Service not ready"),
    onprem(S, 500, 1014, "Internal error"),
    cloud(S, 400, 1014, "Internal error"),
    onprem(S, 503, 1017, "Not Primary Master"),
    cloud(S, 400, 1017, "Not Primary Master"),
    onprem(S, 503, 1018, "Not Primary Coreapp"),
    cloud(S, 400, 1018, "Not Primary Coreapp"),
    onprem(S, 500, 1023, "Database error occurred"),
    cloud(S, 400, 1023, "Database error occurred"),
    onprem(S, 500, 500, "Generic error"),
    onprem(S, 400, 500, "Generic error"),
    cloud(S, 400, 500, "Generic error"),
    onprem(S, 500, 1000, "Generic error"),
    cloud(S, 400, 1000, "Generic error"),
    cloud(S, 500, 1, "An unknown error has occurred."),
    onprem(S, 400, 1, "An unknown error has occurred."),
    cloud(S, 503, 2, "Service temporarily unavailable"),
    onprem(S, 400, 2, "Service temporarily unavailable"),
    cloud(S, 500, 131000, "Something went wrong"),
    cloud(S, 400, 131000, "Something went wrong"),
    onprem(S, 400, 131000, "Something went wrong"),
    cloud(S, 503, 131016, "Service unavailable"),
    onprem(S, 400, 131016, "Service unavailable"),
    cloud(S, 503, 133004, "Server temporarily unavailable"),
    onprem(S, 400, 133004, "Server temporarily unavailable"),
    onprem(S, 400, 2002, "Template fetch failed"),  # §3.2: the one transient 2xxx code
    cloud(S, 400, 2002, "Template fetch failed"),
    # HTTP 500/502 for a few minutes (the daily 360dialog restart).
    bare(S, 500, "HTTP 500", "non-json"),
    bare(S, 500, "Internal Server Error", "onprem-nocode"),
    bare(S, 502, "WhatsApp for Business API not available", "gateway"),
    bare(S, 504, "HTTP 504", "non-json"),
    # Cloud 131056: the pair rate, even behind a 429 (which alone would slow the whole channel).
    cloud(R, 400, 131056, "(Business Account, Consumer Account) pair rate limit hit"),
    cloud(R, 429, 131056, "(Business Account, Consumer Account) pair rate limit hit"),
    onprem(R, 400, 131056, "(Business Account, Consumer Account) pair rate limit hit"),
    # 408, 410: expired; retried while the row's own expires_at allows.
    onprem(S, 400, 408, "Message is not valid"),
    cloud(S, 400, 408, "Message is not valid"),
    onprem(S, 400, 410, "Message expired"),
    cloud(S, 400, 410, "Message expired"),
    bare(S, 408, "HTTP 408", "non-json"),
    # On-Prem 1006 "unknown contact": one more try.
    onprem(M, 404, 1006, "Resource not found", "unknown contact", note="contact"),
    onprem(
        M, 400, 1006, "Resource not found", "Could not retrieve phone number from contact store"
    ),
    cloud(M, 404, 1006, "Resource not found"),
    # 470 / 131047: the window is closed.
    onprem(W, 400, 470, "Re-engagement message", "More than 24 hours have passed"),
    cloud(W, 400, 470, "Re-engagement message"),
    cloud(W, 400, 131047, "Re-engagement message", "More than 24 hours have passed"),
    onprem(W, 400, 131047, "Re-engagement message"),
    # 471: quality limit (On-Premise); the whole number is restricted, so the channel pauses.
    onprem(C, 400, 471, "Spam rate limit hit"),
    cloud(C, 400, 471, "Spam rate limit hit"),
    # Issue 18 (waba-2026.md §1.4). 131048: spam-rate limit; only marketing is held.
    cloud(ErrorClass.SPAM_LIMIT, 400, 131048, "Spam rate limit hit"),
    onprem(ErrorClass.SPAM_LIMIT, 400, 131048, "Spam rate limit hit"),
    # 131049: per-user marketing cap; once more, a day later (outbox.domain.policy).
    cloud(
        ErrorClass.MARKETING_CAP,
        400,
        131049,
        "This message was not delivered to maintain healthy ecosystem engagement.",
    ),
    onprem(
        ErrorClass.MARKETING_CAP,
        400,
        131049,
        "This message was not delivered to maintain healthy ecosystem engagement.",
    ),
    # 131050: the user stopped marketing messages: fail, record the opt-out.
    cloud(ErrorClass.OPTED_OUT, 400, 131050, "User has stopped marketing messages"),
    onprem(ErrorClass.OPTED_OUT, 400, 131050, "User has stopped marketing messages"),
    # 131057: account in maintenance (the one-minute throughput upgrade): transient.
    cloud(ErrorClass.MAINTENANCE, 400, 131057, "Business account is in maintenance mode"),
    onprem(ErrorClass.MAINTENANCE, 503, 131057, "Business account is in maintenance mode"),
    # 132015: template paused: its rows wait for it.
    cloud(ErrorClass.TEMPLATE_PAUSED, 400, 132015, "Template is paused"),
    onprem(ErrorClass.TEMPLATE_PAUSED, 400, 132015, "Template is paused"),
    # Permanent, recipient: 1013, 1026/131026, 1021/131021, 472/130472, 130497, 1007.
    onprem(P, 400, 1013, "User is not valid"),
    cloud(P, 400, 1013, "User is not valid"),
    onprem(P, 400, 1026, "Receiver incapable"),
    cloud(P, 400, 1026, "Receiver incapable"),
    cloud(P, 400, 131026, "Message undeliverable", "not on WhatsApp"),
    onprem(P, 400, 131026, "Message undeliverable"),
    onprem(P, 400, 1021, "Bad user"),
    cloud(P, 400, 1021, "Bad user"),
    cloud(P, 400, 131021, "Recipient cannot be sender"),
    onprem(P, 400, 131021, "Recipient cannot be sender"),
    onprem(P, 400, 472, "User's number is part of an experiment"),
    cloud(P, 400, 472, "User's number is part of an experiment"),
    cloud(P, 400, 130472, "User's number is part of an experiment"),
    onprem(P, 400, 130472, "User's number is part of an experiment"),
    cloud(P, 400, 130497, "Business account is restricted from messaging users in this country"),
    onprem(P, 400, 130497, "Business account is restricted from messaging users in this country"),
    onprem(P, 400, 1007, "Recipient blocked"),
    cloud(P, 400, 1007, "Recipient blocked"),
    # Permanent, request / template: 1001, 1002, 1004, 1005, 1008-1010, 1025, 501, 131051, 100,
    # 131008/131009, 2xxx, 132xxx (and §3.3's 33 and 131005).
    onprem(P, 400, 1001, "Message too long"),
    cloud(P, 400, 1001, "Message too long"),
    onprem(P, 400, 1002, "Invalid recipient type"),
    cloud(P, 400, 1002, "Invalid recipient type"),
    onprem(P, 400, 1004, "Resource already exists"),
    cloud(P, 400, 1004, "Resource already exists"),
    onprem(P, 400, 1005, "Access denied"),
    cloud(P, 400, 1005, "Access denied"),
    onprem(P, 400, 1008, "Required parameter is missing"),
    cloud(P, 400, 1008, "Required parameter is missing"),
    onprem(P, 400, 1009, "Parameter value is not valid"),
    cloud(P, 400, 1009, "Parameter value is not valid"),
    onprem(P, 400, 1010, "Parameter is not required"),
    cloud(P, 400, 1010, "Parameter is not required"),
    onprem(P, 400, 1025, "Invalid request"),
    cloud(P, 400, 1025, "Invalid request"),
    onprem(P, 400, 501, "Message type is not currently supported"),
    cloud(P, 400, 501, "Message type is not currently supported"),
    cloud(P, 400, 131051, "Unsupported message type"),
    onprem(P, 400, 131051, "Unsupported message type"),
    cloud(P, 400, 100, "Invalid parameter"),
    onprem(P, 400, 100, "Invalid parameter"),
    cloud(P, 400, 33, "This message is sent to an invalid phone number"),
    onprem(P, 400, 33, "Invalid parameter"),
    cloud(P, 400, 131005, "Access denied"),
    onprem(P, 400, 131005, "Access denied"),
    cloud(P, 400, 131008, "Required parameter is missing"),
    onprem(P, 400, 131008, "Required parameter is missing"),
    cloud(P, 400, 131009, "Parameter value is not valid"),
    onprem(P, 400, 131009, "Parameter value is not valid"),
    onprem(P, 400, 2000, "Template param count mismatch"),
    cloud(P, 400, 2000, "Template param count mismatch"),
    onprem(P, 400, 2001, "Template missing"),
    cloud(P, 400, 2001, "Template missing"),
    onprem(P, 400, 2003, "Template pack missing"),
    onprem(P, 400, 2004, "Param length too long"),
    onprem(P, 400, 2012, "Template parameter format mismatch"),
    onprem(P, 400, 2036, "Invalid header structure"),
    onprem(P, 400, 2060, "Template rejected"),
    onprem(P, 400, 2061, "Template paused"),
    onprem(P, 400, 2062, "Template disabled"),
    cloud(P, 400, 2062, "Template disabled"),
    onprem(P, 400, 2068, "Flow blocked"),
    cloud(P, 400, 132000, "Number of parameters does not match the expected number of params"),
    onprem(P, 400, 132000, "Template param count mismatch"),
    cloud(P, 400, 132001, "Template name does not exist in the translation"),
    onprem(P, 400, 132001, "Template missing"),
    cloud(P, 400, 132005, "(#132005) Hydrated text length exceeded the limit"),
    cloud(P, 400, 132012, "Parameter format does not match format in the created template"),
    cloud(P, 400, 132016, "(#132016) Template has been disabled"),
    onprem(P, 400, 132016, "Template is disabled"),
    # Media: 131052/131053, 131014, On-Prem 1006 for media: one more try.
    cloud(M, 400, 131052, "Media download error"),
    onprem(M, 400, 131052, "Media download error"),
    cloud(M, 400, 131053, "Media upload error", "could not fetch"),
    onprem(M, 400, 131053, "Media upload error"),
    cloud(M, 400, 131014, "Media URL fetch failed", "Request for url failed with error: 404"),
    onprem(M, 400, 131014, "Media URL fetch failed"),
    onprem(M, 404, 1006, "Resource not found", "media id not found", note="media"),
    # Channel blocked: 401, 403, 402/131042, "disabled" / "lack of payment", 368, 1031/131031,
    # 430-433, 1022, 1024 (and §3.3's config codes 0, 190, 10, 200-299, 131045, 133010).
    bare(C, 401, "Invalid api_key or token expired", "gateway-key"),
    bare(C, 401, "HTTP 401", "non-json"),
    bare(C, 403, "HTTP 403", "non-json"),
    # A 404 with no code is a wrong base_url: every row would fail alike.
    bare(C, 404, "HTTP 404", "non-json"),
    # Issue 19 §3: a redirect is not followed (it would carry the key): the channel pauses.
    bare(C, 307, "the API answered with a redirect, not followed", "redirect"),
    bare(C, 301, "HTTP 301", "moved"),
    bare(C, 308, "HTTP 308", "permanent-redirect"),
    bare(C, 403, "Endpoint blocked", "gateway-blocked"),
    onprem(C, 400, 402, "Business eligibility – payment issue"),
    cloud(C, 400, 402, "Business eligibility payment issue"),
    cloud(C, 400, 131042, "Business eligibility payment issue"),
    onprem(C, 400, 131042, "Business eligibility payment issue"),
    bare(C, 400, "Your WhatsApp for Business API has been disabled", "gateway-disabled"),
    bare(C, 400, "Your WhatsApp for Business API Has Been Disabled", "gateway-disabled-case"),
    bare(C, 400, "Could not send message due to lack of payment", "gateway-payment"),
    cloud(C, 400, 368, "Temporarily blocked for policies violations"),
    onprem(C, 400, 368, "Temporarily blocked for policies violations"),
    onprem(C, 400, 1031, "Sender account has been locked"),
    cloud(C, 400, 1031, "Sender account has been locked"),
    cloud(C, 400, 131031, "Account has been locked"),
    onprem(C, 400, 131031, "Account has been locked"),
    onprem(C, 400, 430, "Unsigned certificate"),
    cloud(C, 400, 430, "Unsigned certificate"),
    onprem(C, 400, 432, "Certificate ID mismatch"),
    cloud(C, 400, 432, "Certificate ID mismatch"),
    onprem(C, 400, 433, "Certificate signature invalid"),
    cloud(C, 400, 433, "Certificate signature invalid"),
    onprem(C, 400, 1022, "Webhooks URL is not configured"),
    cloud(C, 400, 1022, "Webhooks URL is not configured"),
    onprem(C, 400, 1024, "Password change required"),
    cloud(C, 400, 1024, "Password change required"),
    cloud(C, 401, 0, "AuthException"),
    cloud(C, 400, 0, "AuthException"),  # code 0 is falsy and must still count
    onprem(C, 400, 0, "AuthException"),
    cloud(C, 401, 190, "Invalid OAuth access token - Cannot parse access token"),
    onprem(C, 400, 190, "Access token has expired"),
    cloud(C, 403, 10, "Application does not have permission for this action"),
    onprem(C, 400, 10, "Permission denied"),
    cloud(C, 403, 200, "Permissions error"),
    onprem(C, 200, 232, "Error Sending"),
    cloud(C, 400, 299, "Permissions error"),
    onprem(C, 400, 299, "Permissions error"),
    cloud(C, 400, 131045, "Incorrect certificate"),
    onprem(C, 400, 131045, "Incorrect certificate"),
    cloud(C, 400, 133010, "Phone number not registered"),
    onprem(C, 400, 133010, "Phone number not registered"),
    # HTTP 2xx with errors[] or no message id: the code decides; without one, transient.
    bare(S, 200, "response has no message id", "no-id"),
    bare(S, 201, "response has no message id", "no-id"),
    bare(S, 200, "Error Sending", "onprem-nocode"),
    bare(S, 200, "request rejected by 360dialog", "gateway"),
    onprem(P, 200, 1013, "User is not valid"),
    cloud(P, 200, 131026, "Message undeliverable"),
    cloud(S, 200, 131000, "Something went wrong"),
    onprem(W, 200, 470, "Re-engagement message"),
    cloud(C, 200, 190, "Invalid OAuth access token"),
    # Codes no row names: the HTTP status decides.
    onprem(P, 400, 999999, "Unheard-of error"),
    cloud(P, 400, 999999, "Unheard-of error"),
    cloud(P, 404, 999999, "Unheard-of error"),
    onprem(P, 400, 199, "Just below the permission range"),
    cloud(P, 400, 300, "Just above the permission range"),
    onprem(P, 400, 480, "User potentially changed"),
    bare(P, 400, "HTTP 400", "non-json"),
    bare(P, 410, "HTTP 410", "non-json"),
    bare(P, 400, "Quota exceeded", "exceeded-alone"),
    bare(P, 400, "Spam rate limit hit", "limit-alone"),
    onprem(S, 500, 999999, "Unheard-of error"),
    cloud(S, 502, 999999, "Unheard-of error"),
    cloud(S, 503, 999999, "Unheard-of error"),
    cloud(S, 408, 999999, "Unheard-of error"),
    cloud(T, 429, 999999, "Unheard-of error"),
    onprem(T, 429, 131021, "Recipient cannot be sender"),
    # 131026 (issue 18) is permanent whatever the status says.
    onprem(P, 429, 131026, "Message undeliverable"),
    cloud(C, 401, 999999, "Unheard-of error"),
    onprem(C, 403, 999999, "Unheard-of error"),
    # A known code wins over a surprising status (mocks and gateways put codes anywhere).
    cloud(R, 403, 131056, "(Business Account, Consumer Account) pair rate limit hit"),
    cloud(T, 500, 130429, "Rate limit hit"),
    cloud(W, 429, 131047, "Re-engagement message"),
    cloud(S, 401, 131000, "Something went wrong"),
    cloud(S, 403, 133004, "Server temporarily unavailable"),
    cloud(M, 503, 131052, "Media download error"),
    cloud(C, 500, 131031, "Account has been locked"),
    onprem(S, 429, 1014, "Internal error"),
    onprem(W, 503, 470, "Re-engagement message"),
]

# The Graph permission range is checked at its ends and the fixture's 232 only.
_RANGE_SAMPLED = frozenset(range(200, 300))


def test_classification_table_has_unique_ids() -> None:
    ids = [case.id for case in CLASSIFICATION]
    assert len(ids) == len(set(ids))


def test_classification_table_covers_every_code_in_the_module_in_both_dialects() -> None:
    shapes: dict[int, set[str]] = {}
    for case in CLASSIFICATION:
        rejected = case.values[0]
        assert isinstance(rejected, Rejected)
        assert isinstance(case.id, str)
        if rejected.code is not None:
            shapes.setdefault(rejected.code, set()).add(case.id.split("-", 1)[0])
    missing = {
        code: sorted({"onprem", "cloud"} - shapes.get(code, set()))
        for code in set(retry._BY_CODE) - _RANGE_SAMPLED
        if shapes.get(code) != {"onprem", "cloud"}
    }
    assert missing == {}


@pytest.mark.parametrize(("rejected", "expected"), CLASSIFICATION)
def test_classify(rejected: Rejected, expected: ErrorClass) -> None:
    assert classify(rejected) is expected


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("cloud__send-error__130429-rate-limit.json", 500, ErrorClass.THROTTLE),
        ("cloud__send-error__131056-pair-rate-limit.json", 403, ErrorClass.RECIPIENT_THROTTLE),
        ("cloud__send-error__190-invalid-token.json", 200, ErrorClass.CHANNEL),
        ("onprem__send-error__200-with-errors-232.json", 200, ErrorClass.CHANNEL),
        ("onprem__send-error__404-1006-unknown-contact.json", 404, ErrorClass.MEDIA),
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
def test_channel_trouble_is_free_and_immediate(attempts: int) -> None:
    # The channel's breaker does the waiting; the row keeps its place in line.
    assert decide(ErrorClass.CHANNEL, attempts, POLICY, const(1.0), 30.0) == Retry(
        timedelta(0), charge=False
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
