from __future__ import annotations

import pytest

from outbox.domain.ratelimit import TokenBucket


def test_starts_full() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.tokens == 5
    assert bucket.take(100.0, 50) == 5
    assert bucket.take(100.0, 1) == 0


@pytest.mark.parametrize(
    ("wanted", "granted", "left"),
    [
        pytest.param(0, 0, 5, id="none"),
        pytest.param(1, 1, 4, id="one"),
        pytest.param(5, 5, 0, id="all"),
        pytest.param(9, 5, 0, id="more-than-held"),
        pytest.param(-2, 0, 5, id="negative"),
    ],
)
def test_take_grants_at_most_what_is_held(wanted: int, granted: int, left: float) -> None:
    bucket = TokenBucket(rate=1, burst=5)
    assert bucket.take(0.0, wanted) == granted
    assert bucket.tokens == left


def test_take_returns_whole_tokens_only() -> None:
    bucket = TokenBucket(rate=1, burst=2.5)
    assert bucket.take(0.0, 10) == 2
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.take(0.0, 1) == 0
    assert bucket.tokens == pytest.approx(0.5)
    granted = bucket.take(0.4, 1)  # 0.9 tokens: still not a whole one
    assert granted == 0
    assert bucket.tokens == pytest.approx(0.9)
    assert bucket.take(0.6, 1) == 1  # 1.1 tokens
    assert bucket.tokens == pytest.approx(0.1)


def test_refills_by_elapsed_time_times_rate() -> None:
    bucket = TokenBucket(rate=4, burst=10)
    assert bucket.take(10.0, 10) == 10
    assert bucket.take(10.5, 10) == 2
    assert bucket.take(11.25, 10) == 3


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3)
    assert bucket.take(0.0, 3) == 3
    assert bucket.take(3600.0, 1000) == 3
    assert bucket.tokens == 0


def test_first_call_does_not_refill_past_burst() -> None:
    bucket = TokenBucket(rate=5, burst=4)
    assert bucket.take(1e9, 100) == 4


def test_give_back_returns_tokens() -> None:
    bucket = TokenBucket(rate=1, burst=10)
    assert bucket.take(0.0, 10) == 10
    bucket.give_back(4)
    assert bucket.tokens == 4
    assert bucket.take(0.0, 10) == 4


def test_give_back_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=1, burst=10)
    assert bucket.take(0.0, 3) == 3
    bucket.give_back(100)
    assert bucket.tokens == 10
    assert bucket.take(0.0, 100) == 10


@pytest.mark.parametrize(
    ("taken", "now", "expected"),
    [
        pytest.param(0, 0.0, 0.0, id="full"),
        pytest.param(4, 0.0, 0.0, id="one-left"),
        pytest.param(5, 0.0, 0.5, id="empty"),
        pytest.param(5, 0.25, 0.25, id="half-refilled"),
        pytest.param(5, 0.5, 0.0, id="refilled"),
    ],
)
def test_wait_time(taken: int, now: float, expected: float) -> None:
    bucket = TokenBucket(rate=2, burst=5)
    assert bucket.take(0.0, taken) == taken
    assert bucket.wait_time(now) == pytest.approx(expected)


def test_wait_time_then_take_succeeds() -> None:
    bucket = TokenBucket(rate=3, burst=1)
    assert bucket.take(7.0, 1) == 1
    wait = bucket.wait_time(7.0)
    assert wait == pytest.approx(1 / 3)
    assert bucket.take(7.0 + wait + 1e-9, 1) == 1


def test_wait_time_advances_the_clock_without_double_counting() -> None:
    bucket = TokenBucket(rate=1, burst=5)
    assert bucket.take(0.0, 5) == 5
    assert bucket.wait_time(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0, 5) == 1
    assert bucket.tokens == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param(0, 5, id="zero-rate"),
        pytest.param(-1, 5, id="negative-rate"),
        pytest.param(1, 0, id="zero-burst"),
        pytest.param(1, 0.5, id="burst-below-one"),
        pytest.param(1, -3, id="negative-burst"),
        pytest.param(float("nan"), 5, id="nan-rate"),
        pytest.param(1, float("nan"), id="nan-burst"),
        pytest.param(1, float("inf"), id="infinite-burst"),
    ],
)
def test_invalid_arguments(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0 and burst >= 1"):
        TokenBucket(rate=rate, burst=burst)


def test_smallest_valid_bucket() -> None:
    bucket = TokenBucket(rate=0.001, burst=1)
    assert bucket.take(0.0, 2) == 1
    assert bucket.wait_time(0.0) == pytest.approx(1000.0)


def test_a_clock_stepping_back_does_not_drain_the_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.take(100.0, 2) == 2
    assert bucket.take(90.0, 3) == 3  # would be 3 - 100 tokens if the step back counted
