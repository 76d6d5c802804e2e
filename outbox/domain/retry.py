"""What to do after a rejected send: classify by HTTP status and API error code, then decide.

The table follows waba-api.md §9.2, as waba-2026.md §1.4 corrects it (issue 18). An API error
code, when present, wins over the HTTP status, because mocks and gateways put real codes behind
surprising statuses (131056 behind a 403, 130429 behind a 500). The classes that need more than
the attempt count (the marketing cap, opt-outs, spam and template holds) are decided in
`outbox.domain.policy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from outbox.domain.codes import WINDOW_CLOSED_CODES
from outbox.domain.response import Rejected


class ErrorClass(StrEnum):
    THROTTLE = "throttle"  # the channel sends too fast
    SERVER = "server"  # transient trouble at 360dialog or Meta
    RECIPIENT_THROTTLE = "recipient_throttle"  # too fast to one recipient (pair rate)
    WINDOW_CLOSED = "window_closed"  # free-form outside the 24-hour window
    MEDIA = "media"  # the media link failed; may be flaky
    CHANNEL = "channel"  # key, account or payment trouble: no message is at fault
    PERMANENT = "permanent"  # request, template or recipient errors
    # Issue 18 (waba-2026.md §1.4):
    MARKETING_CAP = "marketing_cap"  # 131049: the user's marketing cap; once, a day later
    OPTED_OUT = "opted_out"  # 131050: the user stopped marketing messages
    MAINTENANCE = "maintenance"  # 131057: the account is in maintenance (throughput upgrade)
    SPAM_LIMIT = "spam_limit"  # 131048: the number is spam-limited; hold its marketing
    TEMPLATE_PAUSED = "template_paused"  # 132015: hold the template's rows until it is active


_BY_CODE: dict[int, ErrorClass] = {
    **dict.fromkeys((4, 80007, 130429, 429, 1015, 1016), ErrorClass.THROTTLE),
    **dict.fromkeys(
        (1, 2, 131000, 131016, 133004, 500, 1000, 1011, 1014, 1017, 1018, 1023, 2002, 408, 410),
        ErrorClass.SERVER,
    ),
    131056: ErrorClass.RECIPIENT_THROTTLE,
    **dict.fromkeys(WINDOW_CLOSED_CODES, ErrorClass.WINDOW_CLOSED),
    # 1006 is On-Premise's "resource not found": a media id, or a contact the API has not
    # looked up yet; one more try is what courier does, and all a stateless sender can do.
    **dict.fromkeys((131052, 131053, 131014, 1006), ErrorClass.MEDIA),
    **dict.fromkeys(
        (0, 190, 10, 368, 402, 131031, 131042, 131045, 133010, 1022, 1024, 1031, 430, 432, 433),
        ErrorClass.CHANNEL,
    ),
    # A quality limit restricts the whole number (On-Premise): pausing it is the safe reading.
    471: ErrorClass.CHANNEL,
    131048: ErrorClass.SPAM_LIMIT,
    131049: ErrorClass.MARKETING_CAP,
    131050: ErrorClass.OPTED_OUT,
    131057: ErrorClass.MAINTENANCE,
    132015: ErrorClass.TEMPLATE_PAUSED,
    # Not on WhatsApp / blocked / old app (131026), an experiment's number (130472): the same
    # content fails the same way again.
    **dict.fromkeys((131026, 130472), ErrorClass.PERMANENT),
    **dict.fromkeys(range(200, 300), ErrorClass.CHANNEL),  # Graph permission errors
}


def classify(rejected: Rejected) -> ErrorClass:
    if rejected.code is not None and rejected.code in _BY_CODE:
        return _BY_CODE[rejected.code]
    status = rejected.http_status
    # 360dialog's own gateway errors carry no WhatsApp code, only a title; a coded error's
    # title is free text ("... length exceeded the limit") and must not be read that way.
    title = rejected.title.lower() if rejected.code is None else ""
    if status == 429 or ("exceeded" in title and "limit" in title):
        return ErrorClass.THROTTLE
    if status in (401, 403) or "lack of payment" in title or "has been disabled" in title:
        return ErrorClass.CHANNEL
    if status == 404 and rejected.code is None:
        # No such endpoint: a wrong base_url fails every row alike, so pause, not fail.
        return ErrorClass.CHANNEL
    if 300 <= status < 400 and rejected.code is None:
        # A redirect is not followed (it would carry the key elsewhere): like a wrong base_url,
        # every row of the channel meets it, so the channel pauses and no row is failed.
        return ErrorClass.CHANNEL
    if status >= 500 or status == 408:
        return ErrorClass.SERVER
    if rejected.code is None and 200 <= status < 300:
        # A 2xx without an id or a code: nothing says the request was wrong.
        return ErrorClass.SERVER
    return ErrorClass.PERMANENT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=2)
    backoff_cap: timedelta = timedelta(minutes=5)
    throttle_delay: timedelta = timedelta(seconds=2)
    recipient_delay: timedelta = timedelta(seconds=6)  # WhatsApp's pair rate: ~1 message / 6 s
    max_retry_after: timedelta = timedelta(hours=1)  # a larger Retry-After is taken as this
    media_attempts: int = 2
    # Issue 18. 131049: Meta says resending sooner "will only result in another error".
    marketing_cap_delay: timedelta = timedelta(hours=24)
    spam_hold: timedelta = timedelta(hours=24)  # 131048: the channel's marketing waits this long
    # A row held for a paused template looks again this often (a release missed, a template
    # unpaused at Meta with no event): its claim checks the registry, no request is sent.
    template_recheck: timedelta = timedelta(hours=1)
    # 131056: the recipient's pause is recipient_delay, times this per repeat, capped.
    pair_pause_factor: float = 4.0
    pair_pause_cap: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Retry:
    delay: timedelta
    charge: bool  # False: the attempt taken at claim time is given back


@dataclass(frozen=True, slots=True)
class GiveUp:
    exhausted: str | None = None  # why retrying stopped, when the error itself was retryable


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> timedelta:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    # Float seconds: 2**attempt as a timedelta overflows long before attempts run out.
    exponent = min(max(attempt - 1, 0), 64)
    ceiling = min(
        policy.backoff_cap.total_seconds(), policy.backoff_base.total_seconds() * 2.0**exponent
    )
    return timedelta(seconds=ceiling * rand())


def throttle_hold(policy: RetryPolicy, retry_after: float | None) -> timedelta:
    """How long a throttle holds back the row and its channel: the API's `Retry-After`, at
    least `throttle_delay` and at most `max_retry_after`; a non-finite hint is ignored."""
    hinted = policy.throttle_delay
    if retry_after is not None and math.isfinite(retry_after):
        hinted = timedelta(seconds=min(retry_after, policy.max_retry_after.total_seconds()))
    return min(max(hinted, policy.throttle_delay), policy.max_retry_after)


def decide(
    error: ErrorClass,
    attempts: int,
    policy: RetryPolicy,
    rand: Callable[[], float],
    retry_after: float | None = None,
) -> Retry | GiveUp:
    """`attempts` counts the attempt that just failed."""
    if error is ErrorClass.THROTTLE:
        return Retry(throttle_hold(policy, retry_after), charge=False)
    if error is ErrorClass.RECIPIENT_THROTTLE:
        return Retry(policy.recipient_delay, charge=False)
    if error is ErrorClass.CHANNEL:
        # The channel's breaker holds everything back; the row itself is not at fault.
        return Retry(timedelta(0), charge=False)
    if error is ErrorClass.MAINTENANCE:
        # About a minute of downtime: back off, but no number of attempts fails the row (only
        # its expires_at does).
        return Retry(backoff(attempts, policy, rand), charge=True)
    if error is ErrorClass.SERVER:
        if attempts >= policy.max_attempts:
            return GiveUp(f"gave up after {attempts} attempts")
        return Retry(backoff(attempts, policy, rand), charge=True)
    if error is ErrorClass.MEDIA:
        if attempts >= policy.media_attempts:
            return GiveUp(f"gave up after {attempts} attempts")
        return Retry(backoff(attempts, policy, rand), charge=True)
    return GiveUp()
