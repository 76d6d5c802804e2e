"""ratelimit: the arithmetic of a channel's shared token bucket, case by case, and simulated runs.

The store reads the bucket under a row lock with the database's clock and, per claim, does
`refill` -> `take` -> (rows) -> `give_back` of the unused tokens; a throttling answer does
`refill` -> `slow_down`. The helpers below replay exactly that sequence.

Most tables use binary fractions (rates 4 and 8, recovery 1/16, ...) so that the float results
are exact and can be compared with `==`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from outbox.domain.ratelimit import Bucket, Limits, give_back, refill, slow_down, take, wait_time

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAN = float("nan")
INF = float("inf")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def micros(moment: datetime) -> int:
    return (moment - T0) // timedelta(microseconds=1)


def claim(
    bucket: Bucket, now: datetime, limits: Limits, wanted: int, ready: int
) -> tuple[int, Bucket]:
    """What `MessageStore.claim` does to the bucket: the rows it leased, and the bucket it stores."""
    granted, after = take(refill(bucket, now, limits), wanted)
    used = min(granted, ready)
    return used, give_back(after, granted - used, limits)


def most_in_one_second(grants: list[tuple[int, int]]) -> int:
    """The largest total granted in any closed window [t, t + 1 s]; grants are (µs, count) sorted
    by time. A window holding the most can always start at a grant, so those are the only ones
    to try."""
    best = total = 0
    first = 0
    for at_us, count in grants:
        total += count
        while grants[first][0] < at_us - 1_000_000:
            total -= grants[first][1]
            first += 1
        best = max(best, total)
    return best


# ---------------------------------------------------------------------------------------- Limits


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(0.0, 10.0, id="rate-zero"),
        pytest.param(-1.0, 10.0, id="rate-negative"),
        pytest.param(-INF, 10.0, id="rate-minus-inf"),
        pytest.param(NAN, 10.0, id="rate-nan"),
        pytest.param(INF, 10.0, id="rate-inf"),
        pytest.param(10.0, 0.999, id="burst-below-one"),
        pytest.param(10.0, 0.0, id="burst-zero"),
        pytest.param(10.0, -5.0, id="burst-negative"),
        pytest.param(10.0, NAN, id="burst-nan"),
        pytest.param(10.0, INF, id="burst-inf"),
        pytest.param(NAN, NAN, id="both-nan"),
    ],
)
def test_limits_reject_unusable_numbers(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limits(rate, burst)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(1.0, 1.0, id="smallest-burst"),
        pytest.param(0.001, 1.0, id="slow-rate"),
        pytest.param(80.0, 8.0, id="typical"),
        pytest.param(1000.0, 1e6, id="large"),
        pytest.param(2.5, 1.5, id="fractional-burst"),
    ],
)
def test_limits_accept_positive_finite_numbers(rate: float, burst: float) -> None:
    limits = Limits(rate, burst)
    assert (limits.rate, limits.burst) == (rate, burst)
    assert (limits.decrease, limits.floor, limits.recovery) == (0.5, 0.05, 0.05)


# ---------------------------------------------------------------------------------------- refill

FOUR = Limits(rate=4.0, burst=10.0)


@pytest.mark.parametrize(
    ("tokens", "elapsed", "expected"),
    [
        pytest.param(0.0, 0.0, 0.0, id="no-time-no-tokens"),
        pytest.param(0.0, 0.5, 2.0, id="half-second"),
        pytest.param(0.25, 0.25, 1.25, id="fraction-plus-fraction"),
        pytest.param(3.0, 1.0, 7.0, id="one-second"),
        pytest.param(0.0, 2.5, 10.0, id="exactly-to-burst"),
        pytest.param(0.0, 3.0, 10.0, id="capped-at-burst"),
        pytest.param(9.5, 3600.0, 10.0, id="idle-hour-capped"),
        pytest.param(10.0, 1.0, 10.0, id="full-stays-full"),
        pytest.param(-2.0, 1.0, 2.0, id="negative-tokens-earn-back"),
        pytest.param(-2.0, 0.25, -1.0, id="still-negative"),
        pytest.param(0.0, 0.000001, 0.000004, id="one-microsecond"),
    ],
)
def test_refill_earns_elapsed_times_rate_up_to_burst(
    tokens: float, elapsed: float, expected: float
) -> None:
    refilled = refill(Bucket(tokens, T0), at(elapsed), FOUR)
    assert refilled == Bucket(expected, at(elapsed), None)


@pytest.mark.parametrize(
    ("rate", "elapsed", "expected"),
    [
        pytest.param(2.0, 1.0, 2.0, id="half-rate"),
        pytest.param(1.0, 2.0, 2.0, id="quarter-rate"),
        pytest.param(0.25, 4.0, 1.0, id="near-floor"),
    ],
)
def test_refill_earns_at_the_reduced_rate(rate: float, elapsed: float, expected: float) -> None:
    limits = Limits(4.0, 10.0, recovery=1e-12)  # next to no recovery: the rate stays put
    refilled = refill(Bucket(0.0, T0, rate), at(elapsed), limits)
    assert (refilled.tokens, refilled.refilled_at) == (expected, at(elapsed))
    assert refilled.rate == pytest.approx(rate)


@pytest.mark.parametrize(
    "bucket",
    [
        pytest.param(Bucket(10.0, T0), id="full"),
        pytest.param(Bucket(3.25, T0), id="partial"),
        pytest.param(Bucket(0.0, T0), id="empty"),
        pytest.param(Bucket(-1.5, T0, 1.0), id="negative-after-slow-down"),
        pytest.param(Bucket(2.0, T0, 0.2), id="at-floor"),
        pytest.param(Bucket(2.0, T0, 3.999), id="almost-recovered"),
    ],
)
@pytest.mark.parametrize(
    "back",
    [
        pytest.param(timedelta(0), id="same-instant"),
        pytest.param(timedelta(microseconds=1), id="one-microsecond-back"),
        pytest.param(timedelta(milliseconds=200), id="statement-order-back"),
        pytest.param(timedelta(seconds=1), id="one-second-back"),
    ],
)
def test_refill_with_a_clock_that_does_not_advance_changes_nothing(
    bucket: Bucket, back: timedelta
) -> None:
    assert refill(bucket, T0 - back, FOUR) == bucket


@pytest.mark.parametrize(
    ("bucket", "back", "later", "tokens", "rate"),
    [
        # After a step back, the bucket earns from the new reading on: one second later it has
        # a second's tokens (rate 4), not nothing until the clock is back where it was.
        pytest.param(Bucket(0.0, T0), 600.0, 1.0, 4.0, None, id="ten-minutes-back-empty"),
        pytest.param(Bucket(3.0, T0), 600.0, 1.0, 7.0, None, id="ten-minutes-back-keeps-tokens"),
        pytest.param(Bucket(0.0, T0), 86400.0, 0.5, 2.0, None, id="one-day-back"),
        pytest.param(Bucket(0.0, T0), 1.5, 1.0, 4.0, None, id="just-past-the-tolerance"),
        pytest.param(Bucket(10.0, T0), 600.0, 1.0, 10.0, None, id="full-stays-full"),
        # A slowed bucket keeps its cut through the step and regains from the new reading.
        pytest.param(Bucket(0.0, T0, 2.0), 600.0, 1.0, 2.0, 2.2, id="slowed-keeps-its-rate"),
    ],
)
def test_a_clock_that_steps_back_counts_no_time_and_re_anchors(
    bucket: Bucket, back: float, later: float, tokens: float, rate: float | None
) -> None:
    stepped = T0 - timedelta(seconds=back)
    anchored = refill(bucket, stepped, FOUR)
    assert (anchored.tokens, anchored.rate) == (bucket.tokens, bucket.rate)
    assert anchored.refilled_at == stepped
    after = refill(anchored, stepped + timedelta(seconds=later), FOUR)
    assert after.tokens == pytest.approx(tokens)
    assert after.rate == (None if rate is None else pytest.approx(rate))


@pytest.mark.parametrize(
    "elapsed",
    [
        pytest.param(0.000001, id="microsecond"),
        pytest.param(0.5, id="half-second"),
        pytest.param(86400.0, id="day"),
    ],
)
def test_refill_moves_refilled_at_to_now(elapsed: float) -> None:
    assert refill(Bucket(0.0, T0, 1.0), at(elapsed), FOUR).refilled_at == at(elapsed)


# Configured 8/s, regains 1/16 of it (0.5/s) per second; floor 1/16 of it (0.5/s).
EIGHT = Limits(rate=8.0, burst=1000.0, floor=0.0625, recovery=0.0625)


@pytest.mark.parametrize(
    ("rate", "elapsed", "expected"),
    [
        pytest.param(4.0, 0.0, 4.0, id="no-time"),
        pytest.param(4.0, 1.0, 4.5, id="one-second"),
        pytest.param(4.0, 2.0, 5.0, id="two-seconds"),
        pytest.param(4.0, 7.5, 7.75, id="almost"),
        pytest.param(4.0, 8.0, None, id="reaches-configured"),
        pytest.param(4.0, 9.0, None, id="would-overshoot"),
        pytest.param(4.0, 86400.0, None, id="long-idle"),
        pytest.param(0.5, 1.0, 1.0, id="from-floor"),
        pytest.param(0.5, 15.0, None, id="floor-to-configured"),
        pytest.param(7.9375, 0.125, None, id="last-step"),
        pytest.param(12.0, 0.0, None, id="above-configured-capped-at-once"),
        pytest.param(12.0, 1.0, None, id="above-configured-capped"),
        pytest.param(8.0, 0.0, None, id="equal-to-configured"),
    ],
)
def test_refill_regains_rate_linearly_until_the_configured_one(
    rate: float, elapsed: float, expected: float | None
) -> None:
    assert refill(Bucket(0.0, T0, rate), at(elapsed), EIGHT).rate == expected


@pytest.mark.parametrize(
    ("rate", "elapsed", "tokens"),
    [
        pytest.param(12.0, 1.0, 8.0, id="earns-at-configured-not-stored"),
        pytest.param(12.0, 0.5, 4.0, id="half-second"),
        pytest.param(1e9, 2.0, 16.0, id="absurd-stored-rate"),
    ],
)
def test_refill_caps_a_stored_rate_above_the_configured_one(
    rate: float, elapsed: float, tokens: float
) -> None:
    """The configured rate was lowered since the bucket slowed down: the old rate never applies."""
    bucket = Bucket(0.0, T0, rate)
    assert bucket.effective_rate(EIGHT) == 8.0
    assert refill(bucket, at(elapsed), EIGHT) == Bucket(tokens, at(elapsed), None)


@pytest.mark.parametrize(
    ("steps", "tokens", "rate"),
    [
        # From 4/s, 4 s regain 2/s. Earned exactly: the integral 4*4 + 0.5*4²/2 = 20 tokens.
        # refill() earns at the rate the interval starts with, so one step earns 4*4 = 16 ...
        pytest.param((4.0,), 16.0, 6.0, id="one-step"),
        # ... and the total depends on how often the bucket was refilled meanwhile:
        pytest.param((2.0, 2.0), 4 * 2 + 5 * 2, 6.0, id="two-steps"),
        pytest.param((1.0, 1.0, 1.0, 1.0), 4 + 4.5 + 5 + 5.5, 6.0, id="four-steps"),
        pytest.param((3.0, 1.0), 4 * 3 + 5.5 * 1, 6.0, id="uneven-steps"),
        # Across the point where the configured rate is reached: 8 s from 4/s to 8/s, then 8/s.
        pytest.param((10.0,), 4 * 10, None, id="past-recovery-one-step"),
        pytest.param((8.0, 2.0), 4 * 8 + 8 * 2, None, id="past-recovery-two-steps"),
    ],
)
def test_refill_during_recovery_earns_at_the_rate_the_interval_starts_with(
    steps: tuple[float, ...], tokens: float, rate: float | None
) -> None:
    bucket = Bucket(0.0, T0, 4.0)
    elapsed = 0.0
    for step in steps:
        elapsed += step
        bucket = refill(bucket, at(elapsed), EIGHT)
    assert bucket == Bucket(tokens, at(elapsed), rate)


@given(
    start=st.floats(0.5, 8.0),
    steps=st.lists(st.integers(1, 5_000_000), min_size=1, max_size=20),
)
def test_refill_during_recovery_never_earns_more_than_the_exact_integral(
    start: float, steps: list[int]
) -> None:
    """However the interval is cut, earnings stay between the start rate's and the true integral
    of the regained rate (so recovering is conservative, never above the configured rate)."""
    bucket = Bucket(0.0, T0, start)
    now = 0
    for step in steps:
        now += step
        bucket = refill(bucket, T0 + timedelta(microseconds=now), EIGHT)
    elapsed = now / 1e6
    to_configured = (8.0 - start) / 0.5
    ramp = min(elapsed, to_configured)
    integral = start * ramp + 0.25 * ramp**2 + 8.0 * (elapsed - ramp)
    assert start * elapsed * (1 - 1e-9) <= bucket.tokens <= integral * (1 + 1e-9)
    assert bucket.tokens <= 8.0 * elapsed * (1 + 1e-9)


# ------------------------------------------------------------------------------------------ take


@pytest.mark.parametrize(
    ("tokens", "wanted", "granted", "left"),
    [
        pytest.param(5.5, 3, 3, 2.5, id="some"),
        pytest.param(5.5, 5, 5, 0.5, id="all-whole"),
        pytest.param(5.5, 6, 5, 0.5, id="more-than-held"),
        pytest.param(5.5, 1000, 5, 0.5, id="far-more-than-held"),
        pytest.param(5.5, 0, 0, 5.5, id="none-wanted"),
        pytest.param(5.5, -3, 0, 5.5, id="negative-wanted"),
        pytest.param(0.99, 1, 0, 0.99, id="not-a-whole-token"),
        pytest.param(0.99, 0, 0, 0.99, id="not-a-whole-token-none-wanted"),
        pytest.param(1.0, 1, 1, 0.0, id="exactly-one"),
        pytest.param(1.0, 7, 1, 0.0, id="exactly-one-more-wanted"),
        pytest.param(1.0, -1, 0, 1.0, id="exactly-one-negative-wanted"),
        pytest.param(0.0, 1, 0, 0.0, id="empty"),
        pytest.param(-0.5, 3, 0, -0.5, id="negative-tokens"),
        pytest.param(-2.0, -2, 0, -2.0, id="negative-both"),
        pytest.param(10.0, 10, 10, 0.0, id="full-burst"),
    ],
)
def test_take_grants_whole_tokens_up_to_wanted_and_held(
    tokens: float, wanted: int, granted: int, left: float
) -> None:
    bucket = Bucket(tokens, T0, 2.0)
    assert take(bucket, wanted) == (granted, Bucket(left, T0, 2.0))


@given(tokens=st.floats(-10.0, 1e6), wanted=st.integers(-10, 10**7))
def test_take_never_overdraws(tokens: float, wanted: int) -> None:
    granted, after = take(Bucket(tokens, T0), wanted)
    assert 0 <= granted <= max(0, wanted)
    assert granted <= max(0.0, tokens)
    assert after.tokens == tokens - granted
    assert after.tokens >= min(0.0, tokens)


# ------------------------------------------------------------------------------------- give_back


@pytest.mark.parametrize(
    ("tokens", "unused", "expected"),
    [
        pytest.param(2.5, 2, 4.5, id="returned"),
        pytest.param(2.5, 0, 2.5, id="nothing-unused"),
        pytest.param(9.0, 5, 10.0, id="capped-at-burst"),
        pytest.param(10.0, 3, 10.0, id="already-full"),
        pytest.param(0.0, 10, 10.0, id="all-of-a-burst"),
        pytest.param(3.0, -4, 3.0, id="negative-ignored"),
        pytest.param(-1.0, 2, 1.0, id="onto-negative-tokens"),
        pytest.param(-1.0, -2, -1.0, id="negative-onto-negative"),
    ],
)
def test_give_back_returns_unused_tokens_up_to_burst(
    tokens: float, unused: int, expected: float
) -> None:
    assert give_back(Bucket(tokens, T0, 2.0), unused, FOUR) == Bucket(expected, T0, 2.0)


# ------------------------------------------------------------------------------------- wait_time


@pytest.mark.parametrize(
    ("tokens", "rate", "expected"),
    [
        pytest.param(1.0, None, 0.0, id="one-token"),
        pytest.param(5.5, None, 0.0, id="several"),
        pytest.param(10.0, 0.25, 0.0, id="full-slow"),
        pytest.param(0.0, None, 0.25, id="empty"),
        pytest.param(0.5, None, 0.125, id="half"),
        pytest.param(0.75, 2.0, 0.125, id="reduced-rate"),
        pytest.param(0.0, 0.25, 4.0, id="at-floor"),
        pytest.param(-1.0, None, 0.5, id="negative"),
        pytest.param(-1.0, 2.0, 1.0, id="negative-reduced-rate"),
        pytest.param(-3.0, 0.5, 8.0, id="deep-negative-reduced-rate"),
        pytest.param(0.5, 16.0, 0.125, id="stored-rate-above-configured"),
    ],
)
def test_wait_time_is_until_one_whole_token(
    tokens: float, rate: float | None, expected: float
) -> None:
    assert wait_time(Bucket(tokens, T0, rate), FOUR) == expected


@given(
    tokens=st.floats(-5.0, 1.0),
    rate=st.one_of(st.none(), st.floats(0.2, 4.0)),
)
def test_waiting_wait_time_earns_the_missing_token(tokens: float, rate: float | None) -> None:
    """Refilling after the wait (rounded up to the database's microsecond) leaves a whole token,
    within float rounding of 1."""
    bucket = Bucket(tokens, T0, rate)
    wait = timedelta(microseconds=math.ceil(wait_time(bucket, FOUR) * 1e6))
    assert refill(bucket, T0 + wait, FOUR).tokens >= 1.0 - 1e-9


# ------------------------------------------------------------------------------------- slow_down


@pytest.mark.parametrize(
    ("limits", "tokens", "rate", "expected_tokens", "expected_rate"),
    [
        pytest.param(EIGHT, 6.5, None, 0.0, 4.0, id="from-configured"),
        pytest.param(EIGHT, 0.25, 4.0, 0.0, 2.0, id="again"),
        pytest.param(EIGHT, 0.0, 6.0, 0.0, 3.0, id="while-recovering"),
        pytest.param(EIGHT, -1.5, 2.0, -1.5, 1.0, id="negative-tokens-kept"),
        pytest.param(EIGHT, 3.0, 0.75, 0.0, 0.5, id="stops-at-floor"),
        pytest.param(EIGHT, 3.0, 0.5, 0.0, 0.5, id="already-at-floor"),
        pytest.param(EIGHT, 3.0, 12.0, 0.0, 4.0, id="stored-above-configured"),
        pytest.param(
            Limits(8.0, 10.0, decrease=0.25, floor=0.125), 1.0, None, 0.0, 2.0, id="custom-decrease"
        ),
        pytest.param(
            Limits(8.0, 10.0, decrease=0.25, floor=0.125), 1.0, 2.0, 0.0, 1.0, id="custom-floor"
        ),
        pytest.param(Limits(8.0, 10.0), 1.0, None, 0.0, 4.0, id="defaults"),
        pytest.param(Limits(8.0, 10.0), 1.0, 0.5, 0.0, 8.0 * 0.05, id="default-floor"),
    ],
)
def test_slow_down_cuts_the_rate_and_spends_the_tokens(
    limits: Limits, tokens: float, rate: float | None, expected_tokens: float, expected_rate: float
) -> None:
    slowed = slow_down(Bucket(tokens, T0, rate), limits)
    assert slowed == Bucket(expected_tokens, T0, expected_rate)
    assert slowed.effective_rate(limits) == expected_rate


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(Limits(80.0, 8.0), id="defaults"),
        pytest.param(EIGHT, id="binary"),
        pytest.param(Limits(3.0, 1.0, decrease=0.9, floor=0.3), id="gentle"),
        pytest.param(Limits(1000.0, 100.0, decrease=0.01, floor=0.001), id="harsh"),
    ],
)
def test_repeated_slow_downs_converge_to_the_floor(limits: Limits) -> None:
    floor = limits.floor * limits.rate
    bucket = Bucket(5.0, T0)
    rates = []
    for _ in range(200):
        bucket = slow_down(bucket, limits)
        rates.append(bucket.effective_rate(limits))
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates))
    assert min(rates) >= floor
    assert rates[-1] == floor
    assert bucket.tokens == 0.0


def test_rate_regains_the_configured_one_after_slow_downs() -> None:
    """Slowed to the floor (0.5/s), regaining 0.5/s per second: 15 s later it is 8/s again."""
    bucket = Bucket(5.0, T0)
    for _ in range(10):
        bucket = slow_down(bucket, EIGHT)
    assert bucket.rate == 0.5
    assert refill(bucket, at(14.0), EIGHT).rate == 7.5
    assert refill(bucket, at(15.0), EIGHT).rate is None


# ---------------------------------------------------------------------- one claim, as the store runs it


@pytest.mark.parametrize(
    ("tokens", "elapsed", "wanted", "ready", "used", "left"),
    [
        pytest.param(10.0, 0.0, 3, 3, 3, 7.0, id="all-ready"),
        pytest.param(10.0, 0.0, 5, 2, 2, 8.0, id="fewer-ready-rest-goes-back"),
        pytest.param(10.0, 0.0, 5, 0, 0, 10.0, id="none-ready-all-goes-back"),
        pytest.param(0.5, 0.25, 5, 5, 1, 0.5, id="refilled-then-taken"),
        pytest.param(0.5, 0.25, 5, 0, 0, 1.5, id="refilled-none-ready"),
        pytest.param(8.0, 1.0, 20, 20, 10, 0.0, id="refill-capped-before-take"),
        pytest.param(0.0, 0.125, 5, 5, 0, 0.5, id="no-whole-token-yet"),
    ],
)
def test_claim_cycle_refills_takes_and_gives_back(
    tokens: float, elapsed: float, wanted: int, ready: int, used: int, left: float
) -> None:
    assert claim(Bucket(tokens, T0), at(elapsed), FOUR, wanted, ready) == (
        used,
        Bucket(left, at(elapsed)),
    )


# ----------------------------------------------------------------------------------- simulations


@dataclass(frozen=True, slots=True)
class Step:
    gap_us: int  # since the previous step; negative: this replica's clock reading is behind
    wanted: int
    ready: int  # rows due; fewer than granted: the rest goes back
    throttled: bool  # this step is a throttling answer (slow_down) instead of a claim


steps = st.builds(
    Step,
    gap_us=st.one_of(st.integers(0, 50_000), st.integers(0, 3_000_000), st.integers(-200_000, 0)),
    wanted=st.integers(-2, 300),
    ready=st.integers(0, 300),
    throttled=st.integers(0, 9).map(lambda n: n == 0),  # one step in ten, about
)


# Two replicas whose clock readings take turns being 0.2 s behind: not a token may come of it.
ZIGZAG = [Step(0, 300, 300, False)] + [
    Step(-200_000, 300, 300, False),
    Step(200_000, 300, 300, False),
] * 10


@settings(max_examples=300, deadline=None)
@example(rate=10.0, burst_share=0.0, decrease=0.5, floor=0.05, recovery=0.05, run=ZIGZAG)
@example(
    rate=10.0,
    burst_share=1.0,
    decrease=0.5,
    floor=0.05,
    recovery=0.05,
    run=[Step(10_000, 3, 3, False)] * 300,
)
@given(
    rate=st.floats(0.5, 200.0),
    burst_share=st.floats(0.0, 3.0),
    decrease=st.floats(0.01, 0.99),
    floor=st.floats(0.01, 1.0),
    recovery=st.floats(1e-6, 2.0),
    run=st.lists(steps, min_size=1, max_size=400),
)
def test_no_second_ever_grants_more_than_rate_plus_burst(
    rate: float, burst_share: float, decrease: float, floor: float, recovery: float, run: list[Step]
) -> None:
    """Any interleaving of claims and throttles on the one bucket, as the row lock serializes
    them. The database clock may also read earlier than the bucket's last refill (a replica's
    statement started before the previous lock holder committed): grants are then placed at the
    bucket's own time, `refilled_at`, which never goes back."""
    limits = Limits(rate, max(1.0, burst_share * rate), decrease, floor, recovery)
    bucket = Bucket(limits.burst, T0)
    now = 0
    grants: list[tuple[int, int]] = []
    for step in run:
        now += step.gap_us
        moment = T0 + timedelta(microseconds=now)
        if step.throttled:
            bucket = slow_down(refill(bucket, moment, limits), limits)
            continue
        used, bucket = claim(bucket, moment, limits, step.wanted, step.ready)
        assert 0 <= used <= max(0, step.wanted)
        assert bucket.tokens <= limits.burst
        if used:
            grants.append((micros(bucket.refilled_at), used))
    assert most_in_one_second(grants) <= rate + limits.burst + 1e-9


@dataclass(frozen=True, slots=True)
class Replica:
    wanted: int  # the most rows one claim asks for (the replica's free capacity)
    jitter: float  # the longest it oversleeps a wait for tokens, in seconds
    busy: float  # share of the least throughput-keeping time it takes per row claimed


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 200.0),
    burst_share=st.floats(0.0, 2.0),
    data=st.data(),
)
def test_replicas_with_a_backlog_use_the_rate_and_never_exceed_it(
    rate: float, burst_share: float, data: st.DataObject
) -> None:
    """A large backlog worked by 1-5 replicas, as the sender does: a replica that got all it
    asked for comes back once it has sent them, one that got fewer sleeps the returned wait and
    asks again. Throughput holds as long as somebody asks before the bucket overflows; so a
    replica sends no slower than the rate (`busy` <= 1 token time per row) and oversleeps a wait
    by at most the time the bucket takes from one token to full, plus 3 % of a token's time."""
    limits = Limits(rate, max(1.0, burst_share * rate))
    token_time = 1.0 / rate
    most = max(1, math.ceil(rate))
    replicas = data.draw(
        st.lists(
            st.builds(
                Replica,
                wanted=st.integers(1, most),
                jitter=st.floats(0.0, (limits.burst - 1.0 + 0.03) * token_time),
                busy=st.floats(0.0, 1.0),
            ),
            min_size=1,
            max_size=5,
        ),
        label="replicas",
    )
    randoms = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    duration = max(60.0, 3000.0 / rate)
    end_us = round(duration * 1e6)

    bucket = Bucket(limits.burst, T0)
    queue = [(0, index) for index in range(len(replicas))]
    grants: list[tuple[int, int]] = []
    granted_total = 0
    while queue[0][0] <= end_us:
        now, index = heapq.heappop(queue)
        replica = replicas[index]
        wanted = randoms.randint(1, replica.wanted)
        used, bucket = claim(bucket, T0 + timedelta(microseconds=now), limits, wanted, ready=wanted)
        if used:
            grants.append((now, used))
            granted_total += used
        if used == wanted:
            pause = randoms.uniform(0.0, replica.busy) * used * token_time
        else:
            pause = wait_time(bucket, limits) + randoms.uniform(0.0, replica.jitter)
        heapq.heappush(queue, (now + max(1, math.ceil(pause * 1e6)), index))

    assert most_in_one_second(grants) <= rate + limits.burst + 1e-9
    assert granted_total >= 0.95 * rate * duration


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"decrease": 0.0}, id="decrease-zero"),
        pytest.param({"decrease": 1.0}, id="decrease-one"),
        pytest.param({"floor": 0.0}, id="floor-zero"),
        pytest.param({"floor": 1.5}, id="floor-above-one"),
        pytest.param({"recovery": 0.0}, id="recovery-zero"),
        pytest.param({"recovery": -1.0}, id="recovery-negative"),
    ],
)
def test_limits_refuse_knobs_that_stall_or_reverse_the_rate(knobs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="decrease"):
        Limits(rate=10, burst=5, **knobs)
