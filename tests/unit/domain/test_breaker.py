from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from outbox.domain.breaker import BreakerState, CircuitBreaker, Transition
from outbox.domain.retry import ErrorClass

OPEN, HALF_OPEN, CLOSED = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED
CHANNEL, SERVER, THROTTLE = ErrorClass.CHANNEL, ErrorClass.SERVER, ErrorClass.THROTTLE
PERMANENT = ErrorClass.PERMANENT


@dataclass(frozen=True)
class Record:
    """`record(now, message_id, error, reason)` returns `expect`."""

    now: float
    message_id: int
    error: ErrorClass | None
    expect: Transition | None = None
    reason: str = "boom"


@dataclass(frozen=True)
class Allowance:
    now: float
    expect: int | None


@dataclass(frozen=True)
class Wait:
    now: float
    expect: float | None


@dataclass(frozen=True)
class Probing:
    message_id: int


@dataclass(frozen=True)
class ProbeUnused:
    pass


@dataclass(frozen=True)
class Forget:
    message_id: int


@dataclass(frozen=True)
class Is:
    state: BreakerState


Step = Record | Allowance | Wait | Probing | ProbeUnused | Forget | Is


def opened(cooldown: float, reason: str = "boom") -> Transition:
    return Transition(OPEN, reason, cooldown)


def closed(after: str = "boom") -> Transition:
    return Transition(CLOSED, f"probe succeeded after: {after}")


def server_trip(reason: str = "boom") -> Transition:
    return Transition(OPEN, f"3 server errors in a row: {reason}", 10.0)


def play(steps: Sequence[Step]) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=60.0)
    for number, step in enumerate(steps):
        where = f"step {number}: {step}"
        if isinstance(step, Record):
            got = breaker.record(step.now, step.message_id, step.error, step.reason)
            assert got == step.expect, where
        elif isinstance(step, Allowance):
            assert breaker.allowance(step.now) == step.expect, where
        elif isinstance(step, Wait):
            assert breaker.wait_time(step.now) == step.expect, where
        elif isinstance(step, Probing):
            breaker.probing(step.message_id)
        elif isinstance(step, ProbeUnused):
            breaker.probe_unused()
        elif isinstance(step, Forget):
            breaker.forget(step.message_id)
        else:
            assert breaker.state is step.state, where


# A channel error at t=0 from row 1: open until t=10.
TRIPPED: list[Step] = [Record(0.0, 1, CHANNEL, opened(10.0)), Is(OPEN)]
# ... and at t=10 row 7 goes out as the probe.
PROBING: list[Step] = [*TRIPPED, Allowance(10.0, 1), Probing(7), Is(HALF_OPEN)]


SCENARIOS = [
    pytest.param(
        [Is(CLOSED), Allowance(0.0, None), Wait(0.0, None), Allowance(1e9, None)],
        id="closed-no-limit",
    ),
    pytest.param(
        [Record(0.0, 1, None), Record(1.0, 2, PERMANENT), Allowance(2.0, None), Is(CLOSED)],
        id="closed-stays-closed",
    ),
    # A channel error opens at once.
    pytest.param(
        [Record(5.0, 1, CHANNEL, opened(10.0, "key revoked"), "key revoked"), Is(OPEN)],
        id="channel-opens-at-once",
    ),
    pytest.param(
        [
            *TRIPPED,
            Allowance(0.0, 0),
            Wait(0.0, 10.0),
            Wait(2.5, 7.5),
            Allowance(9.5, 0),
            Wait(9.5, 0.5),
            Is(OPEN),
        ],
        id="open-counts-down",
    ),
    pytest.param(
        [*TRIPPED, Wait(10.0, 0.0), Wait(25.0, 0.0), Is(OPEN), Allowance(25.0, 1)],
        id="wait-never-negative",
    ),
    pytest.param(
        [*TRIPPED, Allowance(10.0, 1), Is(HALF_OPEN), Allowance(11.0, 1), Wait(11.0, None)],
        id="half-open-after-cooldown",
    ),
    pytest.param(
        [*PROBING, Allowance(10.0, 0), Allowance(100.0, 0), Wait(100.0, None)],
        id="probe-out-no-more",
    ),
    # Server errors: `threshold` in a row.
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Is(CLOSED),
            Allowance(1.0, None),
            Record(2.0, 3, SERVER, server_trip("HTTP 503"), "HTTP 503"),
            Is(OPEN),
            Wait(2.0, 10.0),
        ],
        id="server-threshold-opens",
    ),
    pytest.param(
        [Record(0.0, 1, SERVER), Record(1.0, 2, SERVER), Is(CLOSED), Allowance(2.0, None)],
        id="server-below-threshold",
    ),
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Record(2.0, 3, None),
            Record(3.0, 4, SERVER),
            Record(4.0, 5, SERVER),
            Is(CLOSED),
            Record(5.0, 6, SERVER, server_trip()),
        ],
        id="accepted-resets-count",
    ),
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Record(2.0, 3, PERMANENT),
            Record(3.0, 4, SERVER),
            Record(4.0, 5, SERVER),
            Is(CLOSED),
        ],
        id="permanent-resets-count",
    ),
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, THROTTLE),
            Record(2.0, 3, SERVER),
            Record(3.0, 4, THROTTLE),
            Record(4.0, 5, SERVER, server_trip()),
        ],
        id="throttle-keeps-count",
    ),
    pytest.param(
        [Record(float(n), n, THROTTLE) for n in range(20)] + [Is(CLOSED)],
        id="throttles-never-open",
    ),
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Record(2.0, 3, CHANNEL, opened(10.0)),
            Is(OPEN),
        ],
        id="channel-opens-mid-count",
    ),
    # The probe's answer.
    pytest.param(
        [
            Record(0.0, 1, CHANNEL, opened(10.0, "payment"), "payment"),
            Allowance(10.0, 1),
            Probing(7),
            Record(10.5, 7, None, closed("payment"), "ok"),
            Is(CLOSED),
            Allowance(10.5, None),
            Wait(10.5, None),
        ],
        id="probe-success-closes",
    ),
    pytest.param(
        [*PROBING, Record(10.5, 7, THROTTLE, closed()), Is(CLOSED)],
        id="probe-throttled-closes",
    ),
    pytest.param(
        [*PROBING, Record(10.5, 7, PERMANENT, closed()), Is(CLOSED)],
        id="probe-permanent-closes",
    ),
    pytest.param(
        [
            *PROBING,
            Record(10.5, 7, CHANNEL, opened(20.0, "still revoked"), "still revoked"),
            Is(OPEN),
            Allowance(30.4, 0),
            Wait(10.5, 20.0),
            Allowance(30.5, 1),
        ],
        id="probe-channel-failure-doubles",
    ),
    pytest.param(
        [
            *PROBING,
            Record(10.5, 7, SERVER, opened(20.0, "HTTP 502"), "HTTP 502"),
            Is(OPEN),
            Wait(10.5, 20.0),
        ],
        id="probe-one-server-failure-reopens",
    ),
    pytest.param(
        [
            *PROBING,
            Record(10.0, 7, SERVER, opened(20.0)),
            Allowance(30.0, 1),
            Probing(8),
            Record(30.0, 8, CHANNEL, opened(40.0)),
            Allowance(70.0, 1),
            Probing(9),
            Record(70.0, 9, SERVER, opened(60.0)),
            Allowance(130.0, 1),
            Probing(10),
            Record(130.0, 10, SERVER, opened(60.0)),
            Wait(130.0, 60.0),
        ],
        id="cooldown-doubles-to-the-cap",
    ),
    pytest.param(
        [
            *PROBING,
            Record(10.0, 7, SERVER, opened(20.0)),
            Allowance(30.0, 1),
            Probing(8),
            Record(30.0, 8, None, closed()),
            Record(31.0, 9, CHANNEL, opened(10.0)),
            Wait(31.0, 10.0),
        ],
        id="success-resets-cooldown",
    ),
    pytest.param(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Record(2.0, 3, SERVER, server_trip()),
            Allowance(12.0, 1),
            Probing(4),
            Record(12.5, 4, None, closed("3 server errors in a row: boom")),
            Record(13.0, 5, SERVER),
            Record(14.0, 6, SERVER),
            Is(CLOSED),
            Record(15.0, 7, SERVER, server_trip()),
        ],
        id="count-starts-over-after-close",
    ),
    # Answers from rows other than the probe say nothing about the API now.
    pytest.param(
        [
            *TRIPPED,
            Record(1.0, 2, CHANNEL),
            Record(2.0, 3, None),
            Record(3.0, 4, SERVER),
            Is(OPEN),
            Wait(3.0, 7.0),
            Allowance(10.0, 1),
        ],
        id="open-ignores-answers",
    ),
    pytest.param(
        [
            *PROBING,
            Record(10.5, 3, None),
            Record(10.6, 4, CHANNEL),
            Is(HALF_OPEN),
            Allowance(10.6, 0),
            Record(11.0, 7, None, closed()),
        ],
        id="half-open-ignores-other-rows",
    ),
    pytest.param(
        [*TRIPPED, Allowance(10.0, 1), Record(10.5, 7, None), Is(HALF_OPEN), Allowance(10.5, 1)],
        id="half-open-no-probe-ignores-all",
    ),
    # A probe that never got an answer.
    pytest.param(
        [*TRIPPED, Allowance(10.0, 1), ProbeUnused(), Allowance(10.0, 1)],
        id="probe-unused-without-probe",
    ),
    pytest.param(
        [*PROBING, ProbeUnused(), Allowance(10.0, 1), Is(HALF_OPEN)],
        id="probe-unused-lets-a-new-probe-go",
    ),
    pytest.param(
        [*PROBING, Forget(7), Allowance(10.0, 1), Probing(8), Record(11.0, 8, None, closed())],
        id="forget-lets-a-new-probe-go",
    ),
    pytest.param(
        [*PROBING, Forget(8), Allowance(10.0, 0), Record(11.0, 7, None, closed())],
        id="forget-other-id-does-nothing",
    ),
    pytest.param(
        [*PROBING, Forget(7), Probing(8), Record(11.0, 7, None), Is(HALF_OPEN), Allowance(11.0, 0)],
        id="forgotten-probe-answer-ignored",
    ),
    pytest.param(
        [Forget(1), ProbeUnused(), Is(CLOSED), Allowance(0.0, None), Record(0.0, 1, SERVER)],
        id="forget-when-closed-is-harmless",
    ),
]


@pytest.mark.parametrize("steps", SCENARIOS)
def test_breaker(steps: list[Step]) -> None:
    play(steps)


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        pytest.param(CHANNEL, True, id="channel"),
        pytest.param(SERVER, False, id="server"),
        pytest.param(THROTTLE, False, id="throttle"),
        pytest.param(ErrorClass.RECIPIENT_THROTTLE, False, id="recipient-throttle"),
        pytest.param(ErrorClass.MEDIA, False, id="media"),
        pytest.param(ErrorClass.WINDOW_CLOSED, False, id="window-closed"),
        pytest.param(PERMANENT, False, id="permanent"),
        pytest.param(None, False, id="accepted"),
    ],
)
def test_one_answer_opens_only_for_channel_errors(error: ErrorClass | None, opens: bool) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=60.0)
    transition = breaker.record(0.0, 1, error, "why")
    assert transition == (opened(10.0, "why") if opens else None)
    assert breaker.state is (OPEN if opens else CLOSED)


@pytest.mark.parametrize(
    ("between", "resets"),
    [
        pytest.param(None, True, id="accepted"),
        pytest.param(PERMANENT, True, id="permanent"),
        pytest.param(ErrorClass.MEDIA, True, id="media"),
        pytest.param(ErrorClass.WINDOW_CLOSED, True, id="window-closed"),
        pytest.param(ErrorClass.RECIPIENT_THROTTLE, True, id="recipient-throttle"),
        pytest.param(THROTTLE, False, id="throttle"),
    ],
)
def test_what_breaks_a_run_of_server_errors(between: ErrorClass | None, resets: bool) -> None:
    play(
        [
            Record(0.0, 1, SERVER),
            Record(1.0, 2, SERVER),
            Record(2.0, 3, between),
            Record(3.0, 4, SERVER, None if resets else server_trip()),
        ]
    )


@pytest.mark.parametrize(
    ("threshold", "errors_to_open"),
    [pytest.param(1, 1, id="threshold-1"), pytest.param(5, 5, id="threshold-5")],
)
def test_threshold_comes_from_the_breaker(threshold: int, errors_to_open: int) -> None:
    breaker = CircuitBreaker(threshold=threshold, cooldown=10.0, max_cooldown=60.0)
    for n in range(1, errors_to_open):
        assert breaker.record(float(n), n, SERVER, "x") is None
    assert breaker.record(9.0, 99, SERVER, "x") == Transition(
        OPEN, f"{errors_to_open} server errors in a row: x", 10.0
    )


def test_probe_now_skips_the_rest_of_the_cool_down_but_keeps_its_doubling() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=100.0)
    breaker.probe_now(0.0)  # closed: nothing to skip
    assert breaker.allowance(0.0) is None
    assert breaker.record(0.0, 1, ErrorClass.CHANNEL, "401") is not None
    assert breaker.allowance(1.0) == 0
    breaker.probe_now(1.0)
    assert breaker.allowance(1.0) == 1  # a probe, at once
    breaker.probing(2)
    again = breaker.record(1.5, 2, ErrorClass.CHANNEL, "401")
    assert again is not None
    assert again.cooldown == 20.0  # the failed probe still doubles the next pause


def test_probe_now_while_an_old_probe_is_out_sends_a_new_one_and_ignores_the_old() -> None:
    """A new key arrived while the probe (sent with the old key) is in flight: its 401 says
    nothing about the new key and must not re-open the breaker with a doubled cool-down."""
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=100.0)
    assert breaker.record(0.0, 1, CHANNEL, "401") is not None
    assert breaker.allowance(10.0) == 1
    breaker.probing(2)  # the old-key probe leaves
    breaker.probe_now(10.5)
    assert breaker.allowance(10.5) == 1  # a new probe, at once
    breaker.probing(3)
    assert breaker.record(10.6, 2, CHANNEL, "401") is None  # the old probe's answer
    assert breaker.state is HALF_OPEN
    assert breaker.record(10.7, 3, None, "") == closed("401")


@pytest.mark.parametrize(
    ("steps", "expect"),
    [
        pytest.param([], None, id="closed-nothing-to-resume"),
        pytest.param([Record(0.0, 1, CHANNEL)], Transition(CLOSED, "elsewhere"), id="open"),
        pytest.param(
            [Record(0.0, 1, CHANNEL), Allowance(10.0, 1), Probing(2)],
            Transition(CLOSED, "elsewhere"),
            id="half-open-with-probe-out",
        ),
    ],
)
def test_resume_closes_a_breaker_whose_pause_ended_elsewhere(
    steps: list[Step], expect: Transition | None
) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=60.0)
    for step in steps:
        if isinstance(step, Record):
            breaker.record(step.now, step.message_id, step.error, step.reason)
        elif isinstance(step, Allowance):
            assert breaker.allowance(step.now) == step.expect
        elif isinstance(step, Probing):
            breaker.probing(step.message_id)
    assert breaker.resume("elsewhere") == expect
    assert breaker.state is CLOSED
    assert breaker.allowance(11.0) is None
    # The doubling starts over: the next pause is the base cool-down again.
    assert breaker.record(12.0, 9, CHANNEL, "x") == opened(10.0, "x")


@pytest.mark.parametrize(
    ("opened", "probe", "asked", "lets"),
    [
        pytest.param(False, None, 7, True, id="closed"),
        pytest.param(True, None, 7, False, id="open"),
        pytest.param(True, 7, 7, True, id="half-open, the probe"),
        pytest.param(True, 7, 8, False, id="half-open, another row"),
    ],
)
def test_which_rows_claimed_earlier_may_still_go(
    opened: bool, probe: int | None, asked: int, lets: bool
) -> None:
    """A row claimed ahead waits for a request slot; if its channel paused meanwhile, it goes
    only as the probe."""
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, max_cooldown=60.0)
    if opened:
        breaker.record(0.0, 1, ErrorClass.CHANNEL, "HTTP 401")
    if probe is not None:
        assert breaker.allowance(20.0) == 1
        breaker.probing(probe)
    assert breaker.lets(asked) is lets
