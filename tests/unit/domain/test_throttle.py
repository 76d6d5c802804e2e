"""The per-source throttle of failed webhook authentications: a table of failure sequences."""

from __future__ import annotations

import pytest

from outbox.domain.throttle import FailureThrottle


@pytest.mark.parametrize(
    ("failures", "at", "expected_wait"),
    [
        pytest.param([0.0] * 19, 1.0, 0.0, id="19-in-a-minute-not-blocked"),
        pytest.param([0.0] * 20, 1.0, 59.0, id="20th-blocks-for-60s"),
        pytest.param([0.0] * 20, 60.0, 0.0, id="block-ends"),
        pytest.param([float(n * 4) for n in range(20)], 77.0, 0.0, id="spread-over-windows"),
        pytest.param([0.0] * 10 + [61.0] * 10, 62.0, 0.0, id="window-restarts"),
    ],
)
def test_blocked_after_limit_failures_in_a_window(
    failures: list[float], at: float, expected_wait: float
) -> None:
    throttle = FailureThrottle(20, window=60.0, block=60.0)
    for when in failures:
        throttle.failed("198.51.100.7", when)
    assert throttle.blocked_for("198.51.100.7", at) == pytest.approx(expected_wait)
    assert throttle.blocked_for("198.51.100.8", at) == 0.0  # others are not affected


def test_the_table_is_bounded_and_forgets_the_least_recent() -> None:
    throttle = FailureThrottle(2, capacity=100)
    throttle.failed("attacker", 0.0)
    throttle.failed("attacker", 0.0)
    for n in range(10_000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}", 1.0)
    assert len(throttle) == 100
    assert throttle.blocked_for("attacker", 2.0) == 0.0  # forgotten: the table holds 100 sources
